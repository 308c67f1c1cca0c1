"""Render batch / explorer jobs on a Ray cluster: one actor per GPU (or per CPU worker), each
holding the model, jobs handed out one at a time and retried when an actor dies.

Ray is an optional extra (``pip install anima[ray]``); this module imports it only when a
`RayExecutor` is built, and says how to install it when it is missing. Results come back to the
driver, which alone writes files (the same `OutputStore.save` as the local path, so the PNGs are
byte-identical), and the manifest is written in input order, so the order of completion does not
show in any output.

`connect` and `actor_layout` (how many actors, threads, resources) serve `anima serve --ray`
too (`anima.server.ray_pool`).

Failure handling: an actor that dies (process killed, node lost) is restarted by Ray
(``max_restarts``), and the job it was running goes back to the front of the queue, up to
`max_attempts` tries; the driver writes a job's images at most once whatever happens.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Sequence

import torch

from anima.errors import AnimaError
from anima.jobs.batch import BatchJob, Deliver, Fail, PipelineSpec
from anima.recipe import Recipe

log = logging.getLogger(__name__)

_PING_S = 0.5  # how often to ask a restarting actor whether it is back


def require_ray():
    """The ray module, or an AnimaError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise AnimaError(
            "running on Ray needs Ray: pip install 'anima[ray]' (or pip install ray)", setting="ray"
        ) from None
    return ray


def connect(address: str | None = None, init_kwargs: dict | None = None):
    """The ray module, connected to the cluster at `address`, or to a local one (started now,
    unless this process already has one)."""
    ray = require_ray()
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False, **(init_kwargs or {})}
        if address:
            kwargs["address"] = address
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise AnimaError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    return ray


def actor_layout(
    ray, *, gpu: bool, workers: int | None, threads: int | None, local: bool
) -> tuple[int, int | None, dict]:
    """(how many actors, torch threads per actor, their `ray.remote` resources): one actor per GPU
    of the cluster, or `workers` (default 2) CPU actors."""
    if workers is None:
        workers = int(ray.cluster_resources().get("GPU", 0)) if gpu else 2
    if workers < 1:
        raise AnimaError(
            "no Ray workers: the cluster has no GPU (ask for CPU workers, or run on the CPU)",
            setting="ray_workers",
        )
    if threads is None and not gpu and local:
        # CPU float results depend on the thread count; a local cluster copies this process's
        # so that its images are byte-identical to the single-process path.
        threads = torch.get_num_threads()
    return workers, threads, {"num_gpus": 1} if gpu else {"num_cpus": 1}


class _Worker:
    """The actor body: builds the pipeline once, then renders recipes sent as JSON."""

    def __init__(self, spec: PipelineSpec, threads: int | None) -> None:
        if threads:
            torch.set_num_threads(threads)  # this actor's own process
        self.pipe = spec.build()

    def pid(self) -> int:
        return os.getpid()

    def render(self, recipe_json: str):
        try:
            result = self.pipe.generate(Recipe.from_json(recipe_json))
        except AnimaError as exc:
            return ("error", str(exc))
        return ("ok", result.uint8(), [r.to_json() for r in result.recipes])


class RayExecutor:
    """Distributes jobs over `workers` actors. `address=None` starts (or reuses) a local cluster."""

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        address: str | None = None,
        workers: int | None = None,
        threads_per_worker: int | None = None,
        max_attempts: int = 3,
        max_restarts: int = 2,
        init_kwargs: dict | None = None,
    ) -> None:
        ray = connect(address, init_kwargs)
        self._ray = ray
        self.spec = spec
        self.max_attempts = max_attempts
        self.max_restarts = max_restarts
        gpu = spec.options.device.startswith("cuda")
        workers, threads_per_worker, resources = actor_layout(
            ray, gpu=gpu, workers=workers, threads=threads_per_worker, local=not address
        )
        # The actor runs in another process; the frozen spec (model paths, run options) pickles.
        actor_cls = ray.remote(**resources, max_restarts=max_restarts, max_task_retries=0)(_Worker)
        self.actors = [actor_cls.remote(spec, threads_per_worker) for _ in range(workers)]

    def actor_pids(self, timeout_s: float = 300.0) -> list[int]:
        """Process ids of the actors, waiting for any that Ray is restarting."""
        deadline = time.monotonic() + timeout_s
        pids = []
        for actor in self.actors:
            while True:
                try:
                    pids.append(self._ray.get(actor.pid.remote()))
                    break
                except self._ray.exceptions.ActorUnavailableError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(_PING_S)
        return pids

    def run(self, jobs: Sequence[BatchJob], deliver: Deliver, fail: Fail) -> None:

        ray = self._ray
        errors = ray.exceptions
        queue: deque[BatchJob] = deque(jobs)
        attempts: dict[str, int] = {}
        deaths: dict[int, int] = {}
        idle = deque(self.actors)
        inflight: dict = {}  # ref -> (job, actor); job None for a "are you back?" ping
        waiting: list[tuple[float, object]] = []  # (time to ping again, actor) while restarting
        finished: set[str] = set()
        while queue or any(j is not None for j, _ in inflight.values()):
            if not (idle or inflight or waiting):
                break  # no worker left
            while queue and idle:
                job, actor = queue.popleft(), idle.popleft()
                attempts[job.key] = attempts.get(job.key, 0) + 1
                inflight[actor.render.remote(job.recipe.to_json())] = (job, actor)
            now = time.monotonic()
            for t, actor in [w for w in waiting if w[0] <= now]:
                waiting.remove((t, actor))
                inflight[actor.pid.remote()] = (None, actor)
            if not inflight:
                time.sleep(max(0.0, min(t for t, _ in waiting) - now))
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=_PING_S)
            for ref in ready:
                job, actor = inflight.pop(ref)
                try:
                    out = ray.get(ref)
                except errors.ActorUnavailableError:
                    # Restarting after a crash: the call never ran. Ask again a little later.
                    if job is not None:
                        attempts[job.key] -= 1
                        queue.appendleft(job)
                    waiting.append((time.monotonic() + _PING_S, actor))
                    continue
                except errors.RayActorError as exc:
                    # The process died during the call: Ray restarts it (up to max_restarts).
                    if job is not None:
                        log.warning("Ray actor died while rendering %s: %s", job.where(), type(exc).__name__)
                        if attempts[job.key] < self.max_attempts:
                            queue.appendleft(job)
                        else:
                            fail(job, f"worker died {attempts[job.key]} times while rendering this job")
                    deaths[id(actor)] = deaths.get(id(actor), 0) + 1
                    if deaths[id(actor)] <= self.max_restarts:
                        waiting.append((time.monotonic() + _PING_S, actor))
                    continue
                except errors.RayTaskError as exc:
                    idle.append(actor)
                    if job is not None:
                        fail(job, f"internal error in a Ray worker: {exc.cause!r}"[:500])
                    continue
                idle.append(actor)
                if job is None or job.key in finished:
                    continue
                finished.add(job.key)
                if out[0] == "error":
                    fail(job, out[1])
                else:
                    deliver(job, out[1], [Recipe.from_json(r) for r in out[2]])
        for job in queue:
            fail(job, "every Ray worker died")
        for ref in [r for r, (j, _) in inflight.items() if j is None]:
            inflight.pop(ref)  # pings still out; nothing to collect

    def shutdown(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []
