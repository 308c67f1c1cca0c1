"""`create_app(service, ...)`: the FastAPI application with its queue, worker and routes.

All state lives in one `ServerContext` on `app.state.ctx` (no module globals), so tests can build
several apps side by side, each with its own data folder.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from anima.errors import AnimaError
from anima.prompt_tools.artist_index import ArtistIndex
from anima.prompt_tools.tag_list import TagList
from anima.server import routes_a1111, routes_controlnet, routes_native, routes_ui, routes_upscale
from anima.server.events import EventHub
from anima.server.jobs import JobStore
from anima.server.security import ApiKeyMiddleware, BodyLimitMiddleware, Limits
from anima.server.service import GenerationService
from anima.server.submit import Submitter
from anima.server.worker import Worker

if TYPE_CHECKING:
    from anima.server.ray_pool import RaySettings

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"


@dataclass(frozen=True)
class PromptHelp:
    """The lists the page completes from and the linter checks against (`--artists`, `--tags`)."""

    artists: ArtistIndex | None = None
    tags: TagList | None = None


@dataclass
class ServerContext:
    service: GenerationService
    store: JobStore
    worker: Worker  # or a RayWorkers: the same methods
    hub: EventHub
    submitter: Submitter
    limits: Limits
    data_dir: Path
    outputs_dir: Path
    inputs_dir: Path
    prompt_help: PromptHelp


def create_app(
    service: GenerationService,
    *,
    data_dir: str | Path,
    outputs_dir: str | Path | None = None,
    limits: Limits | None = None,
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
    preview_every: int = 2,
    start_worker: bool = True,
    prompt_help: PromptHelp | None = None,
    ray: RaySettings | None = None,
) -> FastAPI:
    """The app. The worker starts with the app (lifespan) unless `start_worker` is False; with
    `ray`, jobs run on a Ray cluster's actors (`anima.server.ray_pool`) instead of this process."""

    data_dir = Path(data_dir)
    outputs_dir = Path(outputs_dir) if outputs_dir else data_dir / "outputs"
    inputs_dir = data_dir / "inputs"
    for d in (data_dir, outputs_dir, inputs_dir):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AnimaError(f"cannot create folder {d}: {exc.strerror}") from None
    limits = limits or Limits()
    store = JobStore(data_dir / "jobs.sqlite3")
    hub = EventHub()
    saved = store.get_options()
    every = int(saved.get("show_progress_every_n_steps", preview_every))
    if ray is not None:
        from anima.server.ray_pool import RayWorkers

        worker: Worker | RayWorkers = RayWorkers(
            store, service, hub, ray, outputs_dir=outputs_dir, inputs_dir=inputs_dir, preview_every=every
        )
    else:
        worker = Worker(
            store, service, hub, outputs_dir=outputs_dir, inputs_dir=inputs_dir, preview_every=every
        )
    if saved.get("sd_model_checkpoint"):
        with contextlib.suppress(AnimaError):  # that model may no longer be served
            service.select_model(saved["sd_model_checkpoint"])
    submitter = Submitter(
        store, service, limits, inputs_dir=inputs_dir, outputs_dir=outputs_dir, wake=worker.wake
    )
    ctx = ServerContext(
        service, store, worker, hub, submitter, limits, data_dir, outputs_dir, inputs_dir,
        prompt_help or PromptHelp(),
    )  # fmt: skip
    _remove_stale_temp_files(outputs_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_worker:
            worker.start()
        try:
            yield
        finally:
            worker.stop()
            store.close()

    app = FastAPI(
        title="anima",
        version="1",
        description="Anima text-to-image server: A1111-compatible API (/sdapi/v1), native jobs API (/api).",
        lifespan=lifespan,
        # FastAPI's /docs and /redoc pages load their scripts from a CDN: off, the page must work
        # offline. /openapi.json stays (any OpenAPI viewer can read it).
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx

    @app.exception_handler(AnimaError)
    async def _user_error(request: Request, exc: AnimaError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    app.include_router(routes_a1111.router)
    app.include_router(routes_native.router)
    app.include_router(routes_ui.router)
    app.include_router(routes_upscale.router)
    app.include_router(routes_controlnet.router)
    routes_native.mount_ui(app, STATIC_DIR)

    # add_middleware wraps: the last added runs first. Auth inside CORS (preflights carry no key).
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(BodyLimitMiddleware, limit=limits.max_body_bytes)  # outermost: before auth reads
    return app


def _remove_stale_temp_files(outputs_dir: Path) -> None:
    # A kill during `atomic_write` leaves its hidden temp file; the job itself is re-run.
    for p in outputs_dir.rglob(".*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
