"""The single generation worker: claims queued jobs one at a time and runs them.

Interrupt and skip work through the pipeline's per-step progress callback: it raises
`JobInterrupted` / `IterationSkipped` at the next step, so a job stops within one sampling step
and the worker goes on with the next job.
"""

from __future__ import annotations

import logging
import threading
import time
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


class Worker:
    def __init__(
        self,
        store: JobStore,
        service: GenerationService,
        hub: EventHub,
        *,
        outputs_dir: Path,
        inputs_dir: Path,
        preview_every: int = 2,
    ) -> None:
        self.store = store
        self.service = service
        self.hub = hub
        self.outputs_dir = Path(outputs_dir)
        self.inputs_dir = Path(inputs_dir)
        self.preview_every = preview_every
        self._state = RunState()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- control
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="anima-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        with self._lock:
            if self._state.job_id:
                # Shutting down is not the user's interrupt: the job goes back to the queue.
                self._state.interrupt = self._state.interrupt or "requeue"
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def interrupt(self, job_id: str | None = None, status: str = "interrupted") -> bool:
        """Stop the running job (any, or only `job_id`) at its next step. False if none matched."""
        with self._lock:
            if not self._state.job_id or (job_id and self._state.job_id != job_id):
                return False
            self._state.interrupt = status
            self._state.interrupt_step = self._state.step
            return True

    def skip(self) -> bool:
        with self._lock:
            if not self._state.job_id:
                return False
            self._state.skip = True
            return True

    def snapshot(self) -> RunState:
        with self._lock:
            s = self._state
            return RunState(**{k: getattr(s, k) for k in s.__dataclass_fields__})

    # ----------------------------------------------------------------- loop
    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.store.claim_next()
            if job is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            self._run(job)

    def _publish_job(self, job_id: str) -> None:
        self.hub.publish({"type": "job", "id": job_id})

    def _run(self, job: QueuedJob) -> None:
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
        except AnimaError as exc:
            status, error = "failed", str(exc)
        except Exception as exc:  # a bug: keep serving, keep the traceback in the log
            log.exception("job %s failed", job.id)
            status, error = "failed", f"internal error: {type(exc).__name__}: {exc}"
        snap = self.snapshot()
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
