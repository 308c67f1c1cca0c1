"""The native API under /api (jobs, history, outputs, a server-sent-events stream) and the web UI."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from anima.demo import NOTICE as DEMO_NOTICE
from anima.errors import AnimaError
from anima.jobs.grid import AXES, SEARCH_REPLACE
from anima.prompt_tools.presets import quality_preset
from anima.recipe import (
    HIRES_UPSCALERS,
    INPAINT_AREAS,
    REGION_OVERLAPS,
    SETTING_DEFAULTS,
    SIZE_PRESETS,
    TILED_VAE_MODES,
    Recipe,
    changed_settings,
)
from anima.recipe.model_defaults import TURBO_DEFAULTS
from anima.recipe.settings import LORA_KEY_RULES
from anima.sampling.names import GUIDANCES
from anima.server import status
from anima.server.jobs import STATUSES, QueuedJob
from anima.server.routes_a1111 import ERRORS, Ctx
from anima.server.schemas import (
    Choices,
    ErrorResponse,
    JobCreate,
    JobOut,
    JobPage,
    ModelDefaults,
    ServerInfo,
    WorkersOut,
)
from anima.server.security import resolve_inside
from anima.server.settings_schema import CLIENT_SETTINGS
from anima.server.submit import stored_inputs
from anima.workflows.control_preprocess import PREPROCESSORS

router = APIRouter(prefix="/api", tags=["native"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no such job or file"}
}
EVENT_KEEPALIVE_S = 15.0


def job_out(c, job: QueuedJob) -> JobOut:
    step, steps = job.step, job.steps or job.spec.recipe.steps
    if job.status == "running":
        snap = c.worker.snapshot(job.id)
        if snap.job_id == job.id:
            step, steps = snap.step, snap.total
    return JobOut(
        id=job.id, status=job.status, kind=job.kind, created=job.created, started=job.started,
        finished=job.finished, recipe=job.spec.recipe.to_dict(), settings=changed_settings(job.spec.recipe),
        n_iter=job.spec.n_iter,
        outputs=job.outputs, urls=[f"/api/outputs/{p}" for p in job.outputs], error=job.error,
        notes=job.notes, step=step, steps=steps, position=c.store.position(job),
        inputs={role: f"/api/jobs/{job.id}/inputs/{role}" for role in stored_inputs(job.spec, c.inputs_dir)},
    )  # fmt: skip


def _get(c, job_id: str) -> QueuedJob:
    job = c.store.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


@router.post("/jobs", status_code=202, response_model=JobOut, responses=ERRORS)
async def create_job(req: JobCreate, c: Ctx) -> JobOut:
    """Queue a recipe (txt2img; img2img with init_image; inpaint with init_image + inpaint.mask)."""
    prepared = await run_in_threadpool(c.submitter.prepare_native, req)
    job = await run_in_threadpool(c.submitter.submit, prepared)
    return job_out(c, job)


@router.get("/jobs", response_model=JobPage, responses=ERRORS)
def list_jobs(
    c: Ctx,
    offset: int = Query(0, ge=0, le=10**9),
    limit: int = Query(50, ge=1, le=200),
    status: str | None = Query(None, description="one status, or 'active' (queued + running)"),
    q: str = Query("", max_length=200, description="only jobs whose prompt holds this text"),
) -> JobPage:
    if status is not None and status not in (*STATUSES, "active"):
        raise AnimaError(f"unknown status {status!r}; use one of {', '.join(STATUSES)} or active")
    jobs, total = c.store.list(offset=offset, limit=limit, status=status, text=q)
    return JobPage(items=[job_out(c, j) for j in jobs], total=total, offset=offset, limit=limit)


@router.get("/jobs/{job_id}", response_model=JobOut, responses={**ERRORS, **NOT_FOUND})
def get_job(job_id: str, c: Ctx) -> JobOut:
    return job_out(c, _get(c, job_id))


@router.delete("/jobs/{job_id}", response_model=JobOut, responses={**ERRORS, **NOT_FOUND})
def delete_job(job_id: str, c: Ctx) -> JobOut:
    """Cancel a queued job, stop a running one at its next step, or forget a finished one."""
    job = _get(c, job_id)
    if job.status == "queued" and c.store.cancel_queued(job_id):
        job = _get(c, job_id)
    elif job.status in ("queued", "running"):
        c.worker.interrupt(job_id, status="cancelled")  # claimed meanwhile: stop it instead
    elif c.store.delete(job_id):
        for path in stored_inputs(job.spec, c.inputs_dir).values():  # its uploads go too; outputs stay
            path.unlink(missing_ok=True)
    out = job_out(c, job)
    c.hub.publish({"type": "job", "id": job_id})
    return out


@router.get(
    "/jobs/{job_id}/preview",
    response_class=Response,
    responses={**ERRORS, **NOT_FOUND, 200: {"content": {"image/png": {}}, "description": "latest preview"}},
)
def job_preview(job_id: str, c: Ctx) -> Response:
    snap = c.worker.snapshot(job_id)
    if snap.job_id != job_id or snap.preview_png is None:
        raise HTTPException(404, "no preview for this job (not running, or none yet)")
    return Response(snap.preview_png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get(
    "/jobs/{job_id}/inputs/{role}",
    response_class=FileResponse,
    responses={**ERRORS, **NOT_FOUND, 200: {"content": {"image/png": {}}, "description": "a stored input"}},
)
def job_input(job_id: str, role: str, c: Ctx) -> FileResponse:
    """An input image stored with the job (its JobOut's ``inputs``): ``init``, ``mask``,
    ``reference``, ``control{i}-image``, ``control{i}-mask``; the page fetches them to fill a form."""
    path = stored_inputs(_get(c, job_id).spec, c.inputs_dir).get(role)
    if path is None or not path.is_file():
        raise HTTPException(404, f"job {job_id!r} has no stored {role!r} image")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get(
    "/outputs/{path:path}",
    response_class=FileResponse,
    responses={**ERRORS, **NOT_FOUND, 200: {"content": {"image/png": {}}, "description": "an output image"}},
)
def output_file(path: str, c: Ctx) -> FileResponse:
    target = resolve_inside(c.outputs_dir, path, "output")
    if target.suffix.lower() != ".png" or not target.is_file():
        raise HTTPException(404, "no such output image")
    return FileResponse(target, media_type="image/png")


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
)
async def events(request: Request, c: Ctx) -> StreamingResponse:
    """Server-sent events: `job` (a JobOut whenever a job changes), `progress` (step/total) and
    `preview` (a new preview image at /api/jobs/{id}/preview)."""

    async def stream():
        with c.hub.subscribe() as sub:
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                event = await sub.get(timeout=EVENT_KEEPALIVE_S)
                if event is None:
                    yield ": keepalive\n\n"
                    continue
                kind = event["type"]
                if kind == "job":
                    job = c.store.get(event["id"])
                    data = job_out(c, job).model_dump() if job else {"id": event["id"], "status": "deleted"}
                else:
                    data = event
                yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"
                await asyncio.sleep(0)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


@router.get("/workers", response_model=WorkersOut, responses=ERRORS)
def workers(c: Ctx) -> WorkersOut:
    """The generation workers (the server itself, or its Ray actors): device, model, current job."""
    return status.workers_out(c.worker, c.store)


@router.get("/info", response_model=ServerInfo, responses=ERRORS)
def info(c: Ctx) -> ServerInfo:
    """What the web UI needs to build its pickers, and the defaults each model starts from."""
    d = Recipe(prompt="")
    models = c.service.models()
    current = c.service.current_model()
    demo_in_use = any(m.demo and m.name == current for m in models)
    return ServerInfo(
        models=[m.name for m in models], current_model=current,
        model_info=[ModelDefaults(name=m.name, demo=m.demo, defaults=dict(m.defaults)) for m in models],
        notice=DEMO_NOTICE if demo_in_use else None,
        loras=sorted(c.service.loras()), samplers=c.service.samplers(), schedulers=c.service.schedulers(),
        control_models=sorted(c.service.control_patches()), control_preprocessors=list(PREPROCESSORS),
        choices=Choices(
            guidances=list(GUIDANCES), hires_upscalers=list(HIRES_UPSCALERS),
            tiled_vae_modes=list(TILED_VAE_MODES),
            inpaint_areas=list(INPAINT_AREAS), grid_axes=sorted([*AXES, *SEARCH_REPLACE]),
            region_overlaps=list(REGION_OVERLAPS), lora_key_rules=list(LORA_KEY_RULES),
            quality_presets=[dataclasses.asdict(quality_preset("default"))],
            presets={"turbo": dict(TURBO_DEFAULTS)},
        ),
        setting_defaults={k: SETTING_DEFAULTS[k] for k in CLIENT_SETTINGS},
        prompt_help={"artists": c.prompt_help.artists is not None, "tags": c.prompt_help.tags is not None},
        size_presets={k: list(v) for k, v in SIZE_PRESETS.items()},
        defaults={k: v for k, v in d.to_dict().items() if k not in ("format", "prompt", "extra", "loras")},
        limits=c.limits.as_dict(),
    )  # fmt: skip


def mount_ui(app: FastAPI, static_dir: Path) -> None:
    """The web UI: / serves index.html, /static/* its assets (all local, no CDN)."""
    app.mount("/static", StaticFiles(directory=static_dir), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(static_dir / "index.html", media_type="text/html")
