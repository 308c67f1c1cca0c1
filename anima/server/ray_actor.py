"""A server job on a Ray actor: the actor body (`ServeActor`, holding a loaded pipeline) and the
server-side `RemoteService` that a `JobRunner` calls as it would call the local service.

One render is one streaming Ray call: the actor runs `PipelineService.run` in a thread and yields
its progress steps and preview images as they happen, then the result (uint8 images and their
recipes, pickled as they are, so the PNGs the server writes are byte-identical to the local
path's). The server turns the stream back into the runner's callbacks; when a callback raises
(interrupt, cancel, skip, shutdown) it tells the actor to stop at its next step, waits for the
stream to end, and raises the same exception. Files are never written on the actor.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import secrets
import socket
import threading
from collections.abc import Callable, Sequence

from anima.errors import AnimaError
from anima.recipe import Recipe
from anima.server.runner import WorkerLost
from anima.server.service import PreviewFn, ServiceSpec, StepFn
from anima.weights.discovery import ModelSet

log = logging.getLogger(__name__)

_END = ("done", "stopped", "error", "crash")  # the kinds of a stream's last event


class _Stopped(Exception):
    """Raised inside the actor's progress callback when the server asked it to stop."""


class ServeActor:
    """The actor body: one `PipelineService` (one model loaded at a time), one render at a time.
    Runs threaded (`max_concurrency` 2) so that `stop` reaches it during a render."""

    def __init__(self, spec: ServiceSpec, threads: int | None, preload: str | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)  # this actor's own process
        self.service = spec.build()
        self._stop_token: str | None = None
        if preload:
            try:
                self.service.load(preload)
            except AnimaError as exc:  # the job that needs it will say why; the actor serves others
                log.warning("could not load %s: %s", preload, exc)

    def info(self) -> dict:
        import ray

        return {
            "pid": os.getpid(), "node": socket.gethostname(), "device": _device_name(self.service.device()),
            "model": self.service.loaded_model(), "node_id": ray.get_runtime_context().get_node_id(),
        }  # fmt: skip

    def stop(self, token: str) -> None:
        self._stop_token = token

    def refresh(self) -> None:
        self.service.refresh()  # LoRA and control patch folders

    def render(
        self, token: str, recipe: Recipe, init_image, mask, preview_every: int, models: Sequence[ModelSet]
    ):
        """Yields ("step", step, total), ("preview", step, total, uint8 image), then one of
        ("done", [(image, recipe)], notes, model, hash), ("stopped",), ("error", message) or
        ("crash", message)."""
        self.service.add_models(models)  # found by the server since this actor started
        events: queue.Queue[tuple] = queue.Queue()

        def progress(step: int, total: int) -> None:
            if self._stop_token == token:
                raise _Stopped()
            events.put(("step", step, total))

        def preview(step: int, total: int, image) -> None:
            events.put(("preview", step, total, image))

        def body() -> None:
            try:
                results, notes = self.service.run(
                    recipe, init_image=init_image, mask=mask, progress=progress,
                    preview=preview if preview_every > 0 else None, preview_every=preview_every,
                )  # fmt: skip
                name = self.service.loaded_model()
                model_hash = next((m.hash for m in self.service.models() if m.name == name), None)
                events.put(("done", results, notes, name, model_hash))
            except _Stopped:
                events.put(("stopped",))
            except AnimaError as exc:
                events.put(("error", str(exc)))
            except Exception as exc:  # a bug: the server fails the job with it, the actor lives on
                log.exception("render failed")
                events.put(("crash", f"{type(exc).__name__}: {exc}"))

        thread = threading.Thread(target=body, name="anima-render", daemon=True)
        thread.start()
        while True:
            event = events.get()
            yield event
            if event[0] in _END:
                break
        thread.join()


class RemoteService:
    """`run` on a Ray actor, for a `JobRunner`. `on_done(model, hash)` hears which model the actor
    holds after each render; `lost` is set when a render ended because the actor died."""

    def __init__(self, ray, actor, models: Callable[[], Sequence[ModelSet]],
                 on_done: Callable[[str | None, str | None], None]) -> None:  # fmt: skip
        self._ray = ray
        self.actor = actor
        self._models = models
        self._on_done = on_done
        self.lost = False

    def run(
        self,
        recipe: Recipe,
        *,
        init_image=None,
        mask=None,
        progress: StepFn | None = None,
        preview: PreviewFn | None = None,
        preview_every: int = 0,
    ) -> tuple[list[tuple[object, Recipe]], list[str]]:
        errors = self._ray.exceptions
        token = secrets.token_hex(8)
        every = preview_every if preview is not None else 0
        try:
            stream = self.actor.render.options(num_returns="streaming").remote(
                token, recipe, init_image, mask, every, tuple(self._models())
            )
            for ref in stream:
                event = self._ray.get(ref)
                kind = event[0]
                if kind in ("step", "preview"):
                    try:
                        if kind == "step" and progress is not None:
                            progress(event[1], event[2])
                        elif kind == "preview" and preview is not None:
                            preview(event[1], event[2], event[3])
                    except BaseException:  # interrupt, skip, shutdown: the actor stops too
                        self.actor.stop.remote(token)
                        self._drain(stream)
                        raise
                    continue
                if kind == "done":
                    self._on_done(event[3], event[4])
                    return list(event[1]), list(event[2])
                if kind == "error":
                    raise AnimaError(event[1])
                raise RuntimeError(f"Ray worker: {event[1] if len(event) > 1 else kind}")
        except errors.RayTaskError as exc:  # a bug in the actor's own code, not a death
            raise RuntimeError(f"Ray worker: {exc.cause!r}"[:500]) from None
        except errors.RayError as exc:  # the process died, or its node (and the stream's objects) was lost
            self.lost = True
            raise WorkerLost(f"the Ray worker running this job died ({type(exc).__name__})") from None
        self.lost = True
        raise WorkerLost("the Ray worker ended the render without a result")

    def _drain(self, stream) -> None:
        """Wait for the stopped render's last event (the actor is free again after it)."""
        try:
            for ref in stream:
                if self._ray.get(ref)[0] in _END:
                    return
        except self._ray.exceptions.RayError:
            self.lost = True  # died meanwhile: the caller's exception stands


def actor_spec(spec: ServiceSpec) -> ServiceSpec:
    """The spec an actor builds: on a GPU it sees only its own device (Ray sets
    CUDA_VISIBLE_DEVICES), so `cuda:1` becomes `cuda`."""
    options = spec.options
    if options.device.startswith("cuda"):
        options = dataclasses.replace(options, device="cuda")
    return dataclasses.replace(spec, options=options)


def _device_name(device: str) -> str:
    if not device.startswith("cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return f"{device} ({torch.cuda.get_device_name(0)}; GPU {visible or 0})"
