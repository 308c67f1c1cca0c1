"""The local generation worker: one thread that claims queued jobs one at a time and runs them
in this process (`JobRunner` with the server's own `PipelineService`).

`Worker` and the Ray pool (`anima.server.ray_pool.RayWorkers`) offer the routes the same
methods: start/stop/wake, interrupt/skip/snapshot by job id, `preview_every`, and `workers()` for
the status endpoints.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from anima.server.events import EventHub
from anima.server.jobs import JobStore
from anima.server.runner import IterationSkipped, JobInterrupted, JobRunner, RunState, WorkerLost
from anima.server.service import GenerationService

__all__ = ["IterationSkipped", "JobInterrupted", "RunState", "Worker", "WorkerInfo", "WorkerLost"]


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as GET /api/workers shows it."""

    name: str
    kind: str  # "local" or "ray"
    state: str  # starting, loading, idle, busy, restarting, dead
    device: str
    pid: int | None = None
    node: str | None = None
    model: str | None = None  # the model it holds loaded
    job: str | None = None  # the job it is running
    step: int = 0
    steps: int = 0
    jobs_done: int = 0
    restarts: int = 0


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
        self.runner = JobRunner(
            store, service, hub, outputs_dir=outputs_dir, inputs_dir=inputs_dir, preview_every=preview_every
        )
        self._jobs_done = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def preview_every(self) -> int:
        return self.runner.preview_every

    @preview_every.setter
    def preview_every(self, value: int) -> None:
        self.runner.preview_every = value

    # ----------------------------------------------------------------- control
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="anima-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.runner.requeue_running()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def interrupt(self, job_id: str | None = None, status: str = "interrupted") -> bool:
        """Stop the running job (any, or only `job_id`) at its next step. False if none matched."""
        return self.runner.interrupt(job_id, status)

    def skip(self, job_id: str | None = None) -> bool:
        return self.runner.skip(job_id)

    def snapshot(self, job_id: str | None = None) -> RunState:
        """The running job's state (only if it is `job_id`, when given); empty when none."""
        snap = self.runner.snapshot()
        return snap if not job_id or snap.job_id == job_id else RunState()

    def refresh(self) -> None:
        """Nothing to tell: the runner uses the server's own service."""

    def workers(self) -> list[WorkerInfo]:
        snap = self.runner.snapshot()
        loaded = getattr(self.service, "loaded_model", lambda: None)()
        device = getattr(self.service, "device", lambda: "cpu")()
        return [
            WorkerInfo(
                "local",
                "local",
                "busy" if snap.job_id else "idle",
                device,
                os.getpid(),
                None,
                loaded,
                snap.job_id or None,
                snap.step,
                snap.total,
                self._jobs_done,
            )  # fmt: skip
        ]

    # ----------------------------------------------------------------- loop
    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.store.claim_next()
            if job is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            self.runner.run(job)
            self._jobs_done += 1
