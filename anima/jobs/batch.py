"""Batch generation: many recipes, one loaded model, an output folder that survives being killed.

`read_jobs` turns a job file into recipes (JSONL: one recipe object per line, plus an optional
``id``; CSV: a header of recipe field names; any other file: one prompt per line). A bad line
becomes a `JobError` naming ``file:line`` and the other lines still run. `run_jobs` renders the jobs
that are not done yet through an executor (`LocalExecutor` here, `anima.jobs.ray.RayExecutor`
on a cluster) and writes images, the progress index and the manifest through `OutputStore`.

Jobs are keyed by a hash of their full recipe and the model files' headers, so re-running skips
finished images, and two identical jobs are rendered once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from anima.errors import AnimaError
from anima.jobs.store import OutputStore
from anima.pipeline import Pipeline, RunOptions
from anima.recipe import SETTINGS, Recipe
from anima.weights.discovery import ModelSet

log = logging.getLogger(__name__)

JOB_KEYS = ("id",)  # allowed in a job line besides the recipe fields


@dataclass(frozen=True)
class BatchJob:
    """One recipe to render. `line` is 1-based in `source` (0 for jobs made by code)."""

    recipe: Recipe
    source: str = ""
    line: int = 0
    job_id: str = ""
    info: tuple[tuple[str, str], ...] = ()  # shown in the manifest (the explorer's artist, seed, ...)
    key: str = ""

    def where(self) -> str:
        if self.line:
            return f"{self.source}:{self.line}"
        info = dict(self.info)
        if "tag" in info:
            return f"{info['tag']} seed {info.get('seed', self.recipe.seed)}"
        return self.job_id or f"job {self.key}"


@dataclass(frozen=True)
class JobError:
    source: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


# --------------------------------------------------------------------- reading job files
def read_jobs(
    path: str | Path, defaults: dict[str, Any] | None = None
) -> tuple[list[BatchJob], list[JobError]]:
    """Jobs and per-line errors of a job file; AnimaError if the file itself cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise AnimaError(f"job file {path} not found") from None
    except IsADirectoryError:
        raise AnimaError(f"job file {path} is a folder") from None
    except UnicodeDecodeError:
        raise AnimaError(f"job file {path} is not UTF-8 text") from None
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(text)
    elif suffix == ".csv":
        rows = _csv_rows(text)
    else:
        rows = [(n, {"prompt": ln.strip()}) for n, ln in enumerate(text.splitlines(), 1)
                if ln.strip() and not ln.lstrip().startswith("#")]  # fmt: skip
    jobs: list[BatchJob] = []
    errors: list[JobError] = []
    for line, row in rows:
        try:
            jobs.append(job_from_row(row, defaults or {}, source=path.name, line=line))
        except AnimaError as exc:
            errors.append(JobError(path.name, line, str(exc)))
    if not jobs and not errors:
        raise AnimaError(f"job file {path} holds no jobs")
    return jobs, errors


def _jsonl_rows(text: str) -> list[tuple[int, Any]]:
    rows = []
    for n, ln in enumerate(text.splitlines(), 1):
        s = ln.strip()
        if not s or s.startswith("#") or s.startswith("//"):
            continue
        try:
            rows.append((n, json.loads(s)))
        except json.JSONDecodeError as exc:
            rows.append((n, _BadRow(f"not valid JSON ({exc.msg} at column {exc.colno})")))
    return rows


@dataclass(frozen=True)
class _BadRow:
    message: str


_INT_FIELDS = {"width", "height", "steps", "seed", "batch_size"}
_FLOAT_FIELDS = {"cfg", "shift", "denoise"}


def _csv_rows(text: str) -> list[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for row in reader:
        line = reader.line_num
        if None in row:
            rows.append((line, _BadRow("more cells than header columns")))
            continue
        values: dict[str, Any] = {}
        bad = None
        for k, v in row.items():
            k = (k or "").strip()
            v = "" if v is None else v
            if v == "":
                continue
            try:
                values[k] = int(v) if k in _INT_FIELDS else float(v) if k in _FLOAT_FIELDS else v
            except ValueError:
                bad = f"column {k!r}: {v!r} is not a number"
                break
        if bad or not any(values.values()):
            if bad:
                rows.append((line, _BadRow(bad)))
            continue
        rows.append((line, values))
    return rows


def job_from_row(row: Any, defaults: dict[str, Any], *, source: str = "", line: int = 0) -> BatchJob:
    """One job from a parsed row (a JSON object of recipe fields and flat settings such as
    ``hires_scale``); AnimaError for anything wrong in it."""
    if isinstance(row, _BadRow):
        raise AnimaError(row.message)
    if not isinstance(row, dict):
        raise AnimaError(f"a job must be a JSON object, got {type(row).__name__}")
    row = dict(row)
    job_id = row.pop("id", "")
    if not isinstance(job_id, str | int) or isinstance(job_id, bool):
        raise AnimaError("'id' must be a string or a number")
    merged = {**defaults, **row}
    flat = {k: merged.pop(k) for k in list(merged) if k in SETTINGS and k not in Recipe.__dataclass_fields__}
    recipe = Recipe.from_dict(merged).with_(**flat).validate()
    if not recipe.prompt.strip():
        raise AnimaError("the prompt is empty")
    return BatchJob(recipe=recipe, source=source, line=line, job_id=str(job_id))


# --------------------------------------------------------------------- model files and keys
@dataclass(frozen=True)
class PipelineSpec:
    """Everything needed to build the same Pipeline in another process (a Ray actor): the resolved
    model set and the run options (picklable: no LoRA resolver, names are paths there)."""

    models: ModelSet
    options: RunOptions = field(default_factory=RunOptions)

    def build(self) -> Pipeline:
        return Pipeline.load(self.models, self.options)

    def fingerprint(self) -> str:
        """Hash of the model files' safetensors headers: changes when the model does."""
        h = hashlib.sha256()
        m = self.models
        parts = [m.diffusers] if m.diffusers else [m.dit, m.text_encoder, m.vae]
        for part in map(Path, parts):
            files = sorted(part.rglob("*.safetensors")) if part.is_dir() else [part]
            for f in files:
                with open(f, "rb") as fh:
                    n = int.from_bytes(fh.read(8), "little")
                    h.update(fh.read(min(n, 100 << 20)))
        return h.hexdigest()[:16]


def job_key(recipe: Recipe, model_fingerprint: str, dtype: str) -> str:
    """Stable id of an image: sha256 of the canonical recipe JSON, the model and the dtype."""
    doc = {**recipe.to_dict(), "model_fingerprint": model_fingerprint, "run_dtype": dtype}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:20]


def with_keys(jobs: Sequence[BatchJob], model_fingerprint: str, dtype: str) -> list[BatchJob]:
    return [replace(j, key=job_key(j.recipe, model_fingerprint, dtype)) for j in jobs]


# --------------------------------------------------------------------- executing
Deliver = Callable[[BatchJob, Sequence[Any], Sequence[Recipe]], None]
Fail = Callable[[BatchJob, str], None]


class Executor(Protocol):
    def run(self, jobs: Sequence[BatchJob], deliver: Deliver, fail: Fail) -> None: ...


class LocalExecutor:
    """Renders jobs one after another with one Pipeline in this process."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe

    def run(self, jobs: Sequence[BatchJob], deliver: Deliver, fail: Fail) -> None:
        for job in jobs:
            try:
                result = self.pipe.generate(job.recipe)
            except AnimaError as exc:
                fail(job, str(exc))
                continue
            except Exception as exc:  # a bug in one job must not lose the others' results
                log.exception("job %s failed", job.where())
                fail(job, f"internal error: {type(exc).__name__}: {exc}")
                continue
            deliver(job, result.uint8(), result.recipes)


class LazyExecutor:
    """Builds the real executor (loads the model, starts Ray) only when there is work to do."""

    def __init__(self, factory: Callable[[], Executor]) -> None:
        self._factory = factory
        self._executor: Executor | None = None

    def run(self, jobs: Sequence[BatchJob], deliver: Deliver, fail: Fail) -> None:
        if not jobs:
            return
        if self._executor is None:
            self._executor = self._factory()
        self._executor.run(jobs, deliver, fail)


@dataclass
class BatchReport:
    total: int = 0
    rendered: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def run_jobs(
    jobs: Sequence[BatchJob],
    store: OutputStore,
    executor: Executor,
    *,
    line_errors: Sequence[JobError] = (),
    progress: Callable[[int, int, BatchJob], None] | None = None,
    on_saved: Callable[[BatchJob, list[Path]], None] | None = None,
    manifest_extra: dict | None = None,
) -> BatchReport:
    """Render the jobs not yet done, save each as it arrives, then write the manifest in input order."""
    if any(not j.key for j in jobs):
        raise ValueError("jobs need keys (batch.with_keys) before running")
    store.open_log()
    report = BatchReport(total=len(jobs) + len(line_errors))
    outcomes: dict[str, Any] = {}
    todo: list[BatchJob] = []
    seen: set[str] = set()
    for job in jobs:
        if job.key in seen:
            continue
        seen.add(job.key)
        if store.is_done(job.key, job.recipe.batch_size):
            store.recover(job.key, job.recipe.batch_size, _info(job))
            report.skipped += 1
        else:
            todo.append(job)

    def deliver(job: BatchJob, images, recipes) -> None:
        paths = store.save(job.key, images, recipes, _info(job))
        report.rendered += 1
        if on_saved is not None:
            on_saved(job, paths)
        if progress is not None:
            progress(report.rendered, len(todo), job)

    def fail(job: BatchJob, message: str) -> None:
        outcomes[job.key] = message
        report.errors.append(f"{job.where()}: {message}")

    try:
        executor.run(todo, deliver, fail)
    finally:
        entries = [_entry(j, store, outcomes.get(j.key)) for j in jobs]
        entries += [
            {"source": e.source, "line": e.line, "status": "error", "error": e.message} for e in line_errors
        ]
        entries.sort(key=lambda e: (e.get("source", ""), e.get("line", 0)))
        store.write_manifest(entries, manifest_extra)
    report.errors = [str(e) for e in line_errors] + report.errors
    return report


def _info(job: BatchJob) -> dict:
    out = {"source": job.source, "line": job.line} if job.line else {}
    if job.job_id:
        out["id"] = job.job_id
    out.update(dict(job.info))
    return out


def _entry(job: BatchJob, store: OutputStore, error: str | None) -> dict:
    entry: dict[str, Any] = {**_info(job), "key": job.key}
    files = store.files_for(job.key, job.recipe.batch_size)
    if error is not None:
        entry.update(status="error", error=error)
    elif all(p.is_file() for p in files):
        entry.update(status="done", files=[str(p.relative_to(store.root)) for p in files])
    else:
        entry["status"] = "pending"
    entry["recipe"] = job.recipe.to_dict()
    return entry
