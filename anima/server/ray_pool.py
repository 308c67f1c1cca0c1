"""`anima serve --ray`: the server's job queue dispatched to Ray actors.

The SQLite `JobStore` in the server process stays the only record of every job. A dispatcher
thread claims the oldest queued job only when some actor is free, and hands it to that actor's
slot: a thread with its own `JobRunner` whose service is the actor (`RemoteService`). So progress,
previews, notes, interrupt, cancel and skip go through the same runner code and event stream as
the local worker, and the server alone writes the output files (atomically). Actors: one per GPU
of the cluster, or `workers` CPU actors (`anima.jobs.ray.actor_layout`), each holding its loaded
pipeline (`ServeActor`).

Model routing (the policy): jobs leave the queue in order, oldest first. The oldest job goes to a
free actor that already holds its model; if no free actor holds it, to a free actor that holds no
model yet, else to the free actor idle the longest, which loads it (dropping its old model). A job
never waits for a busy actor that holds its model while another actor is free.

Faults: when an actor dies during a job (process killed, node lost), the job goes back to its
place at the front of the queue and another actor (or the same one, restarted by Ray up to
`max_restarts` times) runs it again; after `max_attempts` deaths the job fails with the reason.
A server that is killed leaves its running jobs `running` in the store; the next server queues
them again (`JobStore` does on open) and the dead server's actors die with it (Ray kills the
actors of a driver that is gone), so no job is lost and none finishes twice: a job's files are
named after it, and only a server writes them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from anima.server.events import EventHub
from anima.server.jobs import JobStore, QueuedJob
from anima.server.ray_actor import RemoteService, ServeActor, actor_spec
from anima.server.runner import JobRunner, RunState
from anima.server.service import PipelineService
from anima.server.worker import WorkerInfo

log = logging.getLogger(__name__)

_POLL_S = 0.5  # how often idle threads look at the queue and restarting actors


@dataclass(frozen=True)
class RaySettings:
    """`address`: a running cluster (None: start a local one); `workers`: actors (None: one per
    GPU, or 2 CPU workers); `threads`: torch threads per CPU actor (None: on a local cluster this
    process's count, the same float kernels as the local path); `num_cpus`: CPUs of a local
    cluster (None: Ray's count)."""

    address: str | None = None
    workers: int | None = None
    threads: int | None = None
    max_attempts: int = 3
    max_restarts: int = 3
    num_cpus: int | None = None


class _Slot:
    """One actor: its runner, its thread, and what the dispatcher and /api/workers know of it."""

    def __init__(self, pool: RayWorkers, index: int, actor) -> None:
        self.pool = pool
        self.name = f"ray-{index}"
        self.actor = actor
        self.remote = RemoteService(pool.ray, actor, pool.service_models, self._on_render)
        self.runner = JobRunner(
            pool.store, self.remote, pool.hub, outputs_dir=pool.outputs_dir, inputs_dir=pool.inputs_dir,
            preview_every=pool.preview_every_default, on_lost=pool.on_lost,
        )  # fmt: skip
        self.inbox: queue.Queue[QueuedJob] = queue.Queue(maxsize=1)
        self.state = "starting"  # starting, idle, busy, restarting, dead (written under pool.lock)
        self.model: str | None = None
        self.info: dict = {}
        self.jobs_done = 0
        self.deaths = 0
        self.last_used = 0.0
        self.thread = threading.Thread(target=self._loop, name=f"anima-{self.name}", daemon=True)

    def _on_render(self, model: str | None, model_hash: str | None) -> None:
        self.model = model
        if model:
            self.pool.service.record_hash(model, model_hash)

    def _set(self, state: str) -> None:
        with self.pool.lock:
            self.state = state
        self.pool.wake()

    def _loop(self) -> None:
        while not self.pool.stopping.is_set():
            if self.state in ("starting", "restarting"):
                self._await_actor()
                continue
            if self.state == "dead":
                return
            try:
                job = self.inbox.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            self.runner.run(job)
            self.jobs_done += 1
            self.last_used = time.monotonic()
            if self.remote.lost:
                self.remote.lost, self.deaths, self.model = False, self.deaths + 1, None
                self._set("restarting" if self.deaths <= self.pool.settings.max_restarts else "dead")
            else:
                self._set("idle")

    def _await_actor(self) -> None:
        """Wait for the actor to answer (started, or restarted by Ray after a death)."""
        errors = self.pool.ray.exceptions
        ref = self.actor.info.remote()
        while not self.pool.stopping.is_set():
            ready, _ = self.pool.ray.wait([ref], timeout=_POLL_S)
            if not ready:
                continue
            try:
                self.info = self.pool.ray.get(ref)
            except errors.ActorUnavailableError:
                time.sleep(_POLL_S)  # restarting: ask again
                return
            except errors.RayActorError as exc:
                self.deaths += 1
                log.warning("Ray worker %s is unavailable: %s", self.name, type(exc).__name__)
                if self.deaths > self.pool.settings.max_restarts:
                    self._set("dead")
                time.sleep(_POLL_S)
                return
            self.model = self.info.get("model")
            self._set("idle")
            return


class RayWorkers:
    """The Ray pool, with the local `Worker`'s methods (start, stop, wake, interrupt, skip,
    snapshot, preview_every, workers)."""

    def __init__(
        self,
        store: JobStore,
        service: PipelineService,
        hub: EventHub,
        settings: RaySettings,
        *,
        outputs_dir: Path,
        inputs_dir: Path,
        preview_every: int = 2,
    ) -> None:
        from anima.jobs.ray import require_ray

        self.ray = require_ray()  # says how to install it, before anything starts
        self.store = store
        self.service = service
        self.hub = hub
        self.settings = settings
        self.outputs_dir = Path(outputs_dir)
        self.inputs_dir = Path(inputs_dir)
        self.preview_every_default = preview_every
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.slots: list[_Slot] = []
        self._wake = threading.Event()
        self._attempts: dict[str, int] = {}  # job id -> deaths of its worker, in this server's life
        self._dispatcher: threading.Thread | None = None
        self._started_cluster = False

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        from anima.jobs.ray import actor_layout, connect

        s = self.settings
        self._started_cluster = not self.ray.is_initialized() and not s.address
        ray = connect(s.address, {"num_cpus": s.num_cpus} if s.num_cpus else None)
        gpu = self.service.device().startswith("cuda")
        workers, threads, resources = actor_layout(
            ray, gpu=gpu, workers=s.workers, threads=s.threads, local=not s.address
        )
        # Threaded (2 calls at once) so that `stop` reaches a rendering actor; a dead actor is
        # restarted by Ray, its running call is not retried (the server re-queues the job itself).
        actor_cls = ray.remote(
            **resources, max_concurrency=2, max_restarts=s.max_restarts, max_task_retries=0
        )(ServeActor)
        spec = actor_spec(self.service.spec())
        current = self.service.current_model()
        self.slots = [_Slot(self, i, actor_cls.remote(spec, threads, current)) for i in range(workers)]
        log.info("Ray: %d worker(s), %s threads each", workers, threads or "default")
        for slot in self.slots:
            slot.thread.start()
        self._dispatcher = threading.Thread(target=self._dispatch, name="anima-ray-dispatch", daemon=True)
        self._dispatcher.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        for slot in self.slots:
            slot.runner.requeue_running()  # shutting down: running jobs go back to the queue
        self._wake.set()
        deadline = time.monotonic() + timeout
        for t in [self._dispatcher, *(s.thread for s in self.slots)]:
            if t is not None and t.is_alive():
                t.join(max(0.1, deadline - time.monotonic()))
        for slot in self.slots:
            while not slot.inbox.empty():  # handed out, never started
                self.store.requeue(slot.inbox.get_nowait().id)
            self.ray.kill(slot.actor)
        if self._started_cluster:
            self.ray.shutdown()

    def wake(self) -> None:
        self._wake.set()

    # ----------------------------------------------------------------- dispatch
    def _dispatch(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                free = [s for s in self.slots if s.state == "idle"]
            job = self.store.claim_next() if free else None
            if job is None:
                self._wake.wait(_POLL_S)
                self._wake.clear()
                continue
            slot = choose_slot(free, job.spec.recipe.model)
            with self.lock:
                slot.state = "busy"
            slot.inbox.put(job)

    def on_lost(self, job: QueuedJob, reason: str) -> str | None:
        """A job's worker died: None (queue it again) until it has died `max_attempts` times."""
        n = self._attempts.get(job.id, 0) + 1
        self._attempts[job.id] = n
        if n < self.settings.max_attempts or self.stopping.is_set():
            return None  # (shutting down: it waits in the queue for the next server)
        return f"{reason}; the job's worker died {n} times, giving up"

    def service_models(self) -> Sequence:
        return self.service.spec().models

    # ----------------------------------------------------------------- the routes' view
    @property
    def preview_every(self) -> int:
        return self.preview_every_default

    @preview_every.setter
    def preview_every(self, value: int) -> None:
        self.preview_every_default = value
        for slot in self.slots:
            slot.runner.preview_every = value

    def _running(self) -> list[tuple[RunState, _Slot]]:
        snaps = [(s.runner.snapshot(), s) for s in self.slots]
        return sorted([(snap, s) for snap, s in snaps if snap.job_id], key=lambda p: p[0].started)

    def snapshot(self, job_id: str | None = None) -> RunState:
        """That job's state, or (no id) the running job that started first; empty when none."""
        for snap, _ in self._running():
            if not job_id or snap.job_id == job_id:
                return snap
        return RunState()

    def interrupt(self, job_id: str | None = None, status: str = "interrupted") -> bool:
        target = job_id or self.snapshot().job_id
        return bool(target) and any(s.runner.interrupt(target, status) for s in self.slots)

    def skip(self, job_id: str | None = None) -> bool:
        target = job_id or self.snapshot().job_id
        return bool(target) and any(s.runner.skip(target) for s in self.slots)

    def refresh(self) -> None:
        for slot in self.slots:
            slot.actor.refresh.remote()  # their LoRA and patch folders; new models come with jobs

    def workers(self) -> list[WorkerInfo]:
        out = []
        for slot in self.slots:
            snap, info = slot.runner.snapshot(), slot.info
            out.append(
                WorkerInfo(
                    slot.name,
                    "ray",
                    slot.state,
                    info.get("device", self.service.device()),
                    info.get("pid"),
                    info.get("node"),
                    slot.model,
                    snap.job_id or None,
                    snap.step,
                    snap.total,
                    slot.jobs_done,
                    slot.deaths,
                )  # fmt: skip
            )
        return out


def choose_slot(free: Sequence[_Slot], model: str | None) -> _Slot:
    """The routing policy (module docstring): a free actor holding `model`, else an empty one,
    else the one idle the longest."""
    for slot in free:
        if slot.model == model:
            return slot
    empty = [s for s in free if s.model is None]
    return empty[0] if empty else min(free, key=lambda s: s.last_used)
