"""The job queue and history, persisted in SQLite.

One row per job. A job is `queued` until the worker claims it (`running`), then ends `done`,
`failed`, `cancelled` (by DELETE while queued or running) or `interrupted` (A1111 interrupt).
A job left `running` by a crash is queued again when the store opens, so nothing queued is
lost; outputs are named after the job, so a re-run replaces rather than duplicates them.

The connection is shared by the HTTP threads and the worker behind one lock; SQLite in WAL mode
keeps each write durable at commit.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anima.errors import AnimaError
from anima.interop.legacy import recipe_from_data
from anima.recipe import Recipe

FINISHED = ("done", "failed", "cancelled", "interrupted")
STATUSES = ("queued", "running", *FINISHED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    id       TEXT UNIQUE NOT NULL,
    kind     TEXT NOT NULL,
    status   TEXT NOT NULL,
    spec     TEXT NOT NULL,
    outputs  TEXT NOT NULL DEFAULT '[]',
    notes    TEXT NOT NULL DEFAULT '[]',
    error    TEXT,
    step     INTEGER NOT NULL DEFAULT 0,
    steps    INTEGER NOT NULL DEFAULT 0,
    created  REAL NOT NULL,
    started  REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS options (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class JobSpec:
    """What to run: a recipe `n_iter` times (seed + i), optionally from an init image and a mask.

    Input images are stored as files in the inputs folder (already resized to the recipe size,
    mask already blurred/inverted), named here relative to that folder.
    """

    recipe: Recipe
    n_iter: int = 1
    init_image: str | None = None
    mask: str | None = None
    output_name: str | None = None
    source: str = "native"

    @property
    def kind(self) -> str:
        if self.recipe.grid:
            return "grid"
        return "inpaint" if self.mask else "img2img" if self.init_image else "txt2img"

    def to_json(self) -> str:
        return json.dumps(
            {
                "recipe": self.recipe.to_dict(),
                "n_iter": self.n_iter,
                "init_image": self.init_image,
                "mask": self.mask,
                "output_name": self.output_name,
                "source": self.source,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        d = json.loads(text)
        return cls(
            recipe=recipe_from_data(d["recipe"]),  # queued before an upgrade: the old JSON too
            n_iter=int(d["n_iter"]),
            init_image=d.get("init_image"),
            mask=d.get("mask"),
            output_name=d.get("output_name"),
            source=d.get("source", "native"),
        )


@dataclass(frozen=True)
class QueuedJob:
    seq: int
    id: str
    kind: str
    status: str
    spec: JobSpec
    outputs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    step: int = 0
    steps: int = 0
    created: float = 0.0
    started: float | None = None
    finished: float | None = None

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED


class JobStore:
    """SQLite-backed queue + history. Thread-safe; every method is one short transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise AnimaError(f"{self.path}: not a usable job database ({exc})") from None
        self._db.row_factory = sqlite3.Row
        # A crash leaves the job it was running as `running`: queue it again (resume on restart).
        with self._lock:
            self._db.execute("UPDATE jobs SET status='queued', started=NULL, step=0 WHERE status='running'")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ----------------------------------------------------------------- writes
    def add(self, spec: JobSpec, notes: list[str] | None = None, job_id: str | None = None) -> QueuedJob:
        job_id = job_id or new_job_id()
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, kind, status, spec, notes, steps, created) VALUES (?,?,?,?,?,?,?)",
                (job_id, spec.kind, "queued", spec.to_json(), json.dumps(notes or []), 0, time.time()),
            )
        return self.get(job_id)

    def claim_next(self) -> QueuedJob | None:
        """Atomically move the oldest queued job to `running` and return it."""
        with self._lock:
            row = self._db.execute(
                "UPDATE jobs SET status='running', started=? WHERE seq = "
                "(SELECT seq FROM jobs WHERE status='queued' ORDER BY seq LIMIT 1) RETURNING *",
                (time.time(),),
            ).fetchone()
        return _job(row) if row else None

    def set_outputs(self, job_id: str, outputs: list[str]) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET outputs=? WHERE id=?", (json.dumps(outputs), job_id))

    def add_note(self, job_id: str, note: str) -> None:
        with self._lock:
            row = self._db.execute("SELECT notes FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is not None:
                notes = json.loads(row["notes"]) + [note]
                self._db.execute("UPDATE jobs SET notes=? WHERE id=?", (json.dumps(notes), job_id))

    def finish(
        self, job_id: str, status: str, *, error: str | None = None, step: int = 0, steps: int = 0
    ) -> None:
        if status not in FINISHED:
            raise ValueError(f"not a final status: {status}")
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status=?, error=?, step=?, steps=?, finished=? WHERE id=?",
                (status, error, step, steps, time.time(), job_id),
            )

    def requeue(self, job_id: str) -> None:
        """Put a running job back at its place in the queue (the server is stopping)."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status='queued', started=NULL, step=0 WHERE id=? AND status='running'",
                (job_id,),
            )

    def cancel_queued(self, job_id: str) -> bool:
        """Cancel a job that has not started; False if it is not queued (any more)."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET status='cancelled', finished=? WHERE id=? AND status='queued'",
                (time.time(), job_id),
            )
            return cur.rowcount == 1

    def delete(self, job_id: str) -> bool:
        """Forget a finished job (its output files stay)."""
        placeholders = ",".join("?" * len(FINISHED))
        with self._lock:
            cur = self._db.execute(
                f"DELETE FROM jobs WHERE id=? AND status IN ({placeholders})", (job_id, *FINISHED)
            )
            return cur.rowcount == 1

    # ----------------------------------------------------------------- reads
    def get(self, job_id: str) -> QueuedJob | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(
        self, *, offset: int = 0, limit: int = 50, status: str | None = None, text: str = ""
    ) -> tuple[list[QueuedJob], int]:
        """Newest first; `status` may be one status or 'active' (queued + running); `text`: only
        jobs whose prompt or negative prompt holds it (case-insensitive, for the history search)."""
        conds: list[str] = []
        args: tuple = ()
        if status == "active":
            conds.append("status IN ('queued','running')")
        elif status:
            conds.append("status=?")
            args += (status,)
        if text:
            conds.append(
                "(instr(lower(json_extract(spec, '$.recipe.prompt')), lower(?)) > 0"
                " OR instr(lower(json_extract(spec, '$.recipe.negative_prompt')), lower(?)) > 0)"
            )
            args += (text, text)
        where = ("WHERE " + " AND ".join(conds)) if conds else ""
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ? OFFSET ?", (*args, limit, offset)
            ).fetchall()
        return [_job(r) for r in rows], total

    def count(self, *statuses: str) -> int:
        placeholders = ",".join("?" * len(statuses))
        with self._lock:
            return self._db.execute(
                f"SELECT COUNT(*) FROM jobs WHERE status IN ({placeholders})", statuses
            ).fetchone()[0]

    def position(self, job: QueuedJob) -> int | None:
        """How many queued jobs run before this one (None unless it is queued)."""
        if job.status != "queued":
            return None
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status='queued' AND seq < ?", (job.seq,)
            ).fetchone()[0]

    # ----------------------------------------------------------------- options
    def get_options(self) -> dict[str, Any]:
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM options").fetchall()
        return {r["key"]: json.loads(r["value"]) for r in rows}

    def set_option(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO options (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, json.dumps(value)),
            )


def new_job_id() -> str:
    return secrets.token_hex(8)


def _job(row: sqlite3.Row) -> QueuedJob:
    return QueuedJob(
        seq=row["seq"],
        id=row["id"],
        kind=row["kind"],
        status=row["status"],
        spec=JobSpec.from_json(row["spec"]),
        outputs=json.loads(row["outputs"]),
        notes=json.loads(row["notes"]),
        error=row["error"],
        step=row["step"],
        steps=row["steps"],
        created=row["created"],
        started=row["started"],
        finished=row["finished"],
    )
