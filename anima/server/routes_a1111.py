"""AUTOMATIC1111-compatible endpoints under /sdapi/v1 (same request and response shapes).

Generation requests go through the same queue as native jobs: the handler queues the job and
waits for it, so A1111 clients see a blocking call while the queue stays fair and persistent.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from anima.errors import AnimaError
from anima.imageio import PARAMETERS_KEY, read_recipe
from anima.interop.a1111 import parse_infotext
from anima.server import a1111, images, status
from anima.server.jobs import QueuedJob
from anima.server.schemas import (
    ErrorResponse,
    GenerationResponse,
    Img2ImgRequest,
    LoraItem,
    OptionsUpdateResponse,
    PNGInfoRequest,
    PNGInfoResponse,
    ProgressResponse,
    ProgressState,
    SamplerItem,
    SchedulerItem,
    SDModelItem,
    Txt2ImgRequest,
)

router = APIRouter(prefix="/sdapi/v1", tags=["A1111 compatible"])
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "invalid request (the message says what to change)"},
    401: {"model": ErrorResponse, "description": "missing or wrong API key"},
    411: {"model": ErrorResponse, "description": "request body without Content-Length"},
    413: {"model": ErrorResponse, "description": "request body too large"},
}


def ctx(request: Request):
    return request.app.state.ctx


Ctx = Annotated[Any, Depends(ctx)]  # the app's ServerContext


# --------------------------------------------------------------------- generation
@router.post("/txt2img", response_model=GenerationResponse, responses=ERRORS)
async def txt2img(req: Txt2ImgRequest, c: Ctx) -> GenerationResponse:
    prepared = await run_in_threadpool(c.submitter.prepare_txt2img, req)
    job = await _run_job(c, prepared)
    return await run_in_threadpool(_response, c, job, req, prepared)


@router.post("/img2img", response_model=GenerationResponse, responses=ERRORS)
async def img2img(req: Img2ImgRequest, c: Ctx) -> GenerationResponse:
    prepared = await run_in_threadpool(c.submitter.prepare_img2img, req)
    job = await _run_job(c, prepared)
    resp = await run_in_threadpool(_response, c, job, req, prepared)
    if req.include_init_images and req.send_images:
        resp.images.append(images.b64_png(images.png_bytes(prepared.init)))
    return resp


async def _run_job(c, prepared) -> QueuedJob:
    job = await run_in_threadpool(c.submitter.submit, prepared)
    with c.hub.subscribe() as sub:
        while True:
            current = c.store.get(job.id)
            if current is None:  # deleted from the history while we waited
                raise HTTPException(400, "the job was removed before it finished")
            if current.is_finished:
                return current
            await sub.get(timeout=1.0)  # any event, or poll once a second


def _response(c, job: QueuedJob, req, prepared) -> GenerationResponse:

    if job.status == "failed":
        if (job.error or "").startswith("internal error"):
            raise HTTPException(500, job.error)
        raise AnimaError(job.error or "the job failed")
    notes = list(job.notes)
    if job.status != "done":
        notes.append(f"the job was {job.status}; returning the {len(job.outputs)} image(s) finished before")
    paths = [c.outputs_dir / p for p in job.outputs]
    recipe = read_recipe(paths[0]) if paths else job.spec.recipe
    payload = [images.b64_png(p.read_bytes()) for p in paths] if req.send_images else []
    model_hash = next((m.hash for m in c.service.models() if m.name == recipe.model), None)
    return GenerationResponse(
        images=payload,
        parameters=req.model_dump(exclude={"init_images", "mask"}),
        info=a1111.info_json(job, recipe, len(paths), notes, model_hash),
    )


# --------------------------------------------------------------------- progress and control
@router.get("/progress", response_model=ProgressResponse, responses=ERRORS)
def progress(c: Ctx, skip_current_image: bool = Query(False)) -> ProgressResponse:
    snap = c.worker.snapshot()
    queued = c.store.count("queued")
    fraction = snap.fraction
    eta = 0.0
    if snap.job_id and fraction > 0:
        elapsed = time.time() - snap.started
        eta = max(0.0, elapsed / fraction - elapsed)
    state = ProgressState(
        skipped=snap.skipped, interrupted=snap.interrupt is not None, job=snap.job_id,
        job_count=queued + (1 if snap.job_id else 0), job_timestamp=snap.timestamp or "0",
        job_no=snap.iteration, sampling_step=snap.step, sampling_steps=snap.total,
    )  # fmt: skip
    image = None
    if snap.preview_png and not skip_current_image:
        image = images.b64_png(snap.preview_png)
    text = f"step {snap.step}/{snap.total}" if snap.job_id else None
    return ProgressResponse(
        progress=fraction, eta_relative=eta, state=state, current_image=image, textinfo=text
    )


@router.get("/memory", response_model=dict[str, Any], responses=ERRORS)
def memory(c: Ctx) -> dict[str, Any]:
    """RAM and CUDA memory of the server's machine, as A1111 reports them, plus the workers."""
    return status.memory(c.worker, c.store)


@router.post("/interrupt", response_model=dict[str, bool], responses=ERRORS)
def interrupt(c: Ctx) -> dict[str, bool]:
    """Stop the running job at its next sampling step (queued jobs still run)."""
    return {"interrupted": c.worker.interrupt()}


@router.post("/skip", response_model=dict[str, bool], responses=ERRORS)
def skip(c: Ctx) -> dict[str, bool]:
    """Drop the running iteration (of n_iter) at its next step; the job goes on with the next one."""
    return {"skipped": c.worker.skip()}


# --------------------------------------------------------------------- catalog
@router.get("/samplers", response_model=list[SamplerItem], responses=ERRORS)
def samplers(c: Ctx) -> list[dict]:
    return a1111.sampler_items(c.service.samplers())


@router.get("/schedulers", response_model=list[SchedulerItem], responses=ERRORS)
def schedulers(c: Ctx) -> list[dict]:
    return a1111.scheduler_items(c.service.schedulers())


@router.get("/sd-models", response_model=list[SDModelItem], responses=ERRORS)
def sd_models(c: Ctx) -> list[SDModelItem]:
    return [
        SDModelItem(
            title=f"{m.name} [{m.hash}]" if m.hash else m.name,
            model_name=m.name,
            hash=m.hash,
            sha256=None,
            filename=m.filename,
        )  # fmt: skip
        for m in c.service.models()
    ]


@router.get("/loras", response_model=list[LoraItem], responses=ERRORS)
def loras(c: Ctx) -> list[LoraItem]:
    return [LoraItem(name=n, alias=n, path=str(p)) for n, p in sorted(c.service.loras().items())]


@router.post("/refresh-checkpoints", response_model=dict[str, int], responses=ERRORS)
def refresh_checkpoints(c: Ctx) -> dict[str, int]:
    c.service.refresh()
    c.worker.refresh()  # Ray workers rescan their LoRA folders
    return {"models": len(c.service.models()), "loras": len(c.service.loras())}


@router.post("/refresh-loras", response_model=dict[str, int], responses=ERRORS)
def refresh_loras(c: Ctx) -> dict[str, int]:
    return refresh_checkpoints(c)


@router.get("/scripts", response_model=dict[str, list[str]], responses=ERRORS)
def scripts() -> dict[str, list[str]]:
    return {"txt2img": [], "img2img": []}  # no A1111 scripts or extensions here


# --------------------------------------------------------------------- options
@router.get("/options", response_model=dict[str, Any], responses=ERRORS)
def get_options(c: Ctx) -> dict[str, Any]:
    current = c.service.current_model()
    model_hash = next((m.hash for m in c.service.models() if m.name == current), None)
    return {
        "sd_model_checkpoint": current,
        "sd_checkpoint_hash": model_hash or "",
        "samples_save": True,
        "samples_format": "png",
        "outdir_samples": str(c.outputs_dir),
        "show_progress_every_n_steps": c.worker.preview_every,
        "live_previews_enable": c.worker.preview_every > 0,
    }


@router.post("/options", response_model=OptionsUpdateResponse, responses=ERRORS)
def set_options(options: Annotated[dict[str, Any], Body()], c: Ctx) -> OptionsUpdateResponse:
    """sd_model_checkpoint, show_progress_every_n_steps and live_previews_enable are honoured
    (and kept across restarts); other keys are listed as ignored."""
    updates: dict[str, Any] = {}
    ignored = []
    for key, value in options.items():
        if key == "sd_model_checkpoint":
            if not isinstance(value, str):
                raise AnimaError("sd_model_checkpoint must be a model name")
            updates[key] = c.service.check_model(value)
        elif key == "show_progress_every_n_steps":
            if not isinstance(value, int) or isinstance(value, bool) or not -1 <= value <= 1000:
                raise AnimaError("show_progress_every_n_steps must be an integer in -1..1000")
            updates[key] = max(0, value)
        elif key == "live_previews_enable":
            if not isinstance(value, bool):
                raise AnimaError("live_previews_enable must be true or false")
            updates["show_progress_every_n_steps"] = (c.worker.preview_every or 2) if value else 0
        else:
            ignored.append(key)
    for key, value in updates.items():  # all checked first: a bad value changes nothing
        if key == "sd_model_checkpoint":
            c.service.select_model(value)
        else:
            c.worker.preview_every = value
        c.store.set_option(key, value)
    return OptionsUpdateResponse(updated=sorted(updates), ignored=ignored)


@router.post("/png-info", response_model=PNGInfoResponse, responses=ERRORS)
def png_info(req: PNGInfoRequest, c: Ctx) -> PNGInfoResponse:

    chunks = images.text_chunks(req.image, "image", c.limits)
    text = chunks.get(PARAMETERS_KEY, "")
    items = {k: v for k, v in chunks.items() if k != PARAMETERS_KEY}
    return PNGInfoResponse(info=text, items=items, parameters=parse_infotext(text) if text else {})
