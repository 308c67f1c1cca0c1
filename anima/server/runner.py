"""Running one queued job: its iterations (or grid cells) through a generation service, its
progress, previews, notes and output files, and its final status in the store.

A `JobRunner` runs one job at a time and keeps that job's `RunState`; the local `Worker` has one,
the Ray pool (`anima.server.ray_pool`) one per actor. The service it calls may run in this
process (`PipelineService`) or on a Ray actor (`RemoteService`): either way the files are written
here, by the server, atomically.

Interrupt and skip work through the per-step progress callback: it raises `JobInterrupted` /
`IterationSkipped` at the next step, so a job stops within one sampling step and the runner goes
on with the next job. A service whose worker dies raises `WorkerLost`: the job goes back to the
queue while `retry_lost` allows, else it fails with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anima.errors import AnimaError
from anima.imageio import save_png
from anima.jobs.contact_sheet import render_sheet
from anima.jobs.grid import GRID_KEY
from anima.jobs.plan import sheet_plan
from anima.server.events import EventHub
from anima.server.images import png_bytes
from anima.server.jobs import JobStore, QueuedJob
from anima.server.service import GenerationService

log = logging.getLogger(__name__)


class JobInterrupted(Exception):
    """Raised from the progress callback to stop the running job (interrupt or cancel)."""


class IterationSkipped(Exception):
    """Raised from the progress callback to drop the current iteration (A1111 'skip')."""


class WorkerLost(Exception):
    """Raised by a remote service when the process running the job died (or its node was lost)."""


@dataclass
class RunState:
    """What the running job is doing; read by /progress and the event stream."""

    job_id: str = ""
    step: int = 0
    total: int = 0
    iteration: int = 0
    n_iter: int = 1
    started: float = 0.0
    timestamp: str = ""
    preview_png: bytes | None = None
    preview_step: int = 0
    interrupt: str | None = None  # None, "interrupted", "cancelled" or "requeue" (shutdown)
    interrupt_step: int = 0  # the step done when the interrupt arrived (the job stops after the next)
    skip: bool = False
    skipped: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        if not self.job_id or self.total <= 0:
            return 0.0
        return min(1.0, (self.iteration + self.step / self.total) / max(1, self.n_iter))


class JobRunner:
    """Runs jobs one at a time through `service`. When the worker running a job dies,
    `on_lost(job, reason)` decides: None queues the job again, a message fails it with that
    message (the default: fail with the reason)."""

    def __init__(
        self,
        store: JobStore,
        service: GenerationService,
        hub: EventHub,
        *,
        outputs_dir: Path,
        inputs_dir: Path,
        preview_every: int = 2,
        on_lost: Callable[[QueuedJob, str], str | None] = lambda job, reason: reason,
    ) -> None:
        self.store = store
        self.service = service
        self.hub = hub
        self.outputs_dir = Path(outputs_dir)
        self.inputs_dir = Path(inputs_dir)
        self.preview_every = preview_every
        self._on_lost = on_lost
        self._state = RunState()
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- control
    def interrupt(self, job_id: str | None = None, status: str = "interrupted") -> bool:
        """Stop the running job (any, or only `job_id`) at its next step. False if none matched."""
        with self._lock:
            if not self._state.job_id or (job_id and self._state.job_id != job_id):
                return False
            self._state.interrupt = status
            self._state.interrupt_step = self._state.step
            return True

    def requeue_running(self) -> None:
        """Shutting down is not the user's interrupt: the running job goes back to the queue."""
        with self._lock:
            if self._state.job_id:
                self._state.interrupt = self._state.interrupt or "requeue"

    def skip(self, job_id: str | None = None) -> bool:
        with self._lock:
            if not self._state.job_id or (job_id and self._state.job_id != job_id):
                return False
            self._state.skip = True
            return True

    def snapshot(self) -> RunState:
        with self._lock:
            s = self._state
            return RunState(**{k: getattr(s, k) for k in s.__dataclass_fields__})

    # ----------------------------------------------------------------- one job
    def _publish_job(self, job_id: str) -> None:
        self.hub.publish({"type": "job", "id": job_id})

    def run(self, job: QueuedJob) -> None:
        spec = job.spec
        with self._lock:
            self._state = RunState(
                job_id=job.id, n_iter=spec.n_iter, total=spec.recipe.steps, started=time.time(),
                timestamp=time.strftime("%Y%m%d%H%M%S"),
            )  # fmt: skip
        self._publish_job(job.id)
        outputs: list[str] = []
        status, error = "done", None
        try:
            init, mask = self._inputs(job)
            if spec.recipe.grid:
                outputs = self._run_sheet(job)
                self.store.set_outputs(job.id, outputs)
            for k in range(0 if spec.recipe.grid else spec.n_iter):
                with self._lock:
                    self._state.iteration, self._state.step, self._state.skip = k, 0, False
                self._check(between_steps=True)
                recipe = spec.recipe.with_(seed=(spec.recipe.seed + k) % 2**64)
                try:
                    results, run_notes = self.service.run(
                        recipe, init_image=init, mask=mask, progress=self._on_step,
                        preview=self._on_preview, preview_every=self.preview_every,
                    )  # fmt: skip
                except IterationSkipped:
                    with self._lock:
                        self._state.skipped = True
                    self.store.add_note(job.id, f"iteration {k + 1} of {spec.n_iter} was skipped")
                    continue
                for note in run_notes if k == 0 else ():  # the same plan for every iteration
                    self.store.add_note(job.id, note)
                outputs += self._save(job, k, results)
                self.store.set_outputs(job.id, outputs)
        except JobInterrupted:
            status = self.snapshot().interrupt or "interrupted"
        except WorkerLost as exc:
            status, error = "lost", str(exc)
        except AnimaError as exc:
            status, error = "failed", str(exc)
        except Exception as exc:  # a bug: keep serving, keep the traceback in the log
            log.exception("job %s failed", job.id)
            status, error = "failed", f"internal error: {type(exc).__name__}: {exc}"
        snap = self.snapshot()
        if status == "lost":
            reason = error or "the worker died"
            error = self._on_lost(job, reason)
            status = "requeue" if error is None else "failed"
            if error is None:
                log.warning("job %s: %s; queued again", job.id, reason)
                self.store.add_note(job.id, f"{reason}; queued again")
        if status == "requeue":
            self.store.requeue(job.id)
        else:
            if status in ("interrupted", "cancelled"):
                self.store.add_note(
                    job.id,
                    f"{status}: interrupt requested after step {snap.interrupt_step}, "
                    f"stopped after step {snap.step} of {snap.total}",
                )
            self.store.finish(job.id, status, error=error, step=snap.step, steps=snap.total)
        with self._lock:
            self._state = RunState()
        self._publish_job(job.id)

    def _run_sheet(self, job: QueuedJob) -> list[str]:
        """A grid job: every cell of the sheet (one image each), then one contact sheet PNG holding
        every cell's recipe, as `anima generate --grid` writes it (re-runnable with --from-png)."""
        plan = sheet_plan(job.spec.recipe)
        cells = []
        with self._lock:
            self._state.n_iter = len(plan.recipes)
        for k, cell in enumerate(plan.recipes):
            with self._lock:
                self._state.iteration, self._state.step = k, 0
            self._check(between_steps=True)
            results, notes = self.service.run(cell, progress=self._on_step)
            for note in notes if k == 0 else ():
                self.store.add_note(job.id, note)
            cells.append(results[0])
        grid = plan.grid.with_cells(r for _, r in cells)
        sheet = render_sheet([img for img, _ in cells], grid.x_labels, grid.y_labels, grid.z_labels)
        first = cells[0][1]
        made = job.spec.recipe.with_(model=first.model, model_hash=first.model_hash, dtype=first.dtype)
        return self._save(job, 0, [(sheet, made)], {GRID_KEY: grid.to_json()})

    def _check(self, between_steps: bool = False) -> None:
        with self._lock:
            if self._state.interrupt:
                raise JobInterrupted(self._state.interrupt)
            if self._state.skip and not between_steps:
                raise IterationSkipped()

    def _on_step(self, step: int, total: int) -> None:
        with self._lock:
            self._state.step, self._state.total = step, total
            event = {
                "type": "progress", "id": self._state.job_id, "step": step, "total": total,
                "iteration": self._state.iteration, "n_iter": self._state.n_iter,
                "progress": self._state.fraction,
            }  # fmt: skip
        self.hub.publish(event)
        self._check()

    def _on_preview(self, step: int, total: int, image) -> None:

        data = png_bytes(image, compress_level=1)
        with self._lock:
            self._state.preview_png, self._state.preview_step = data, step
            job_id = self._state.job_id
        self.hub.publish({"type": "preview", "id": job_id, "step": step})

    def _inputs(self, job: QueuedJob):
        from PIL import Image

        def load(name: str | None, mode: str):
            if not name:
                return None
            path = self.inputs_dir / name
            try:
                with Image.open(path) as im:
                    return im.convert(mode)
            except OSError as exc:
                raise AnimaError(f"input image of job {job.id} is missing or unreadable: {exc}") from None

        return load(job.spec.init_image, "RGB"), load(job.spec.mask, "L")

    def _save(self, job: QueuedJob, iteration: int, results, extra: dict | None = None) -> list[str]:

        folder = job.spec.output_name or time.strftime("%Y-%m-%d", time.localtime(job.created))
        rel = []
        batch = len(results)
        for b, (arr, recipe) in enumerate(results):
            name = f"{folder}/{job.seq:06d}-{job.id[:8]}-{iteration}-{b}.png"
            meta = {"anima_job": {"id": job.id, "kind": job.kind, "iteration": iteration}, **(extra or {})}
            save_png(self.outputs_dir / name, arr, recipe, meta, batch_pos=b if batch > 1 else None)
            rel.append(name)
        return rel
