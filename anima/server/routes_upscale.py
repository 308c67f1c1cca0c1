"""A1111's upscaler endpoints: ``GET /sdapi/v1/upscalers`` and ``POST /sdapi/v1/extra-single-image``.

The upscalers are the built-in resizes plus the upscaler model files of the server's upscale_models/
folder (by file name; A1111 clients may also send the stem). A plain upscale runs the model on the
request's image (`anima.workflows.upscale_model`, tiled) and resizes to the asked factor or size with
Lanczos, as A1111's "Extras" tab does.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from anima.errors import AnimaError
from anima.recipe import HIRES_UPSCALERS
from anima.server import images
from anima.server.routes_a1111 import ERRORS

router = APIRouter(prefix="/sdapi/v1", tags=["A1111 compatible"])


def _ctx(request: Request):
    return request.app.state.ctx


Ctx = Annotated[Any, Depends(_ctx)]


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class ExtraSingleImageRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # A1111's face restorers etc. are ignored

    image: str = Field(..., description="base64 image")
    upscaler_1: str = "None"
    resize_mode: int = Field(0, ge=0, le=1, description="0: by upscaling_resize, 1: to width x height")
    upscaling_resize: float = Field(2.0, gt=0, le=16)
    upscaling_resize_w: int = Field(512, ge=1, le=16384)
    upscaling_resize_h: int = Field(512, ge=1, le=16384)


class ExtraSingleImageResponse(BaseModel):
    html_info: str
    image: str


@router.get("/upscalers", response_model=list[UpscalerItem], responses=ERRORS)
def upscalers(c: Ctx) -> list[UpscalerItem]:
    out = [UpscalerItem(name="None"), UpscalerItem(name="Lanczos")]
    out += [UpscalerItem(name=n) for n in HIRES_UPSCALERS if n.startswith("latent")]
    found = sorted(c.service.upscalers().items())
    out += [UpscalerItem(name=n, model_name=p.stem, model_path=str(p)) for n, p in found]
    return out


@router.post("/extra-single-image", response_model=ExtraSingleImageResponse, responses=ERRORS)
async def extra_single_image(req: ExtraSingleImageRequest, c: Ctx) -> ExtraSingleImageResponse:
    return await run_in_threadpool(_upscale, c, req)


def _upscale(c, req: ExtraSingleImageRequest) -> ExtraSingleImageResponse:
    import torch

    from anima.imageio import to_uint8
    from anima.workflows.resample import resize_images
    from anima.workflows.upscale_model import UpscaleModel

    im = images.to_rgb(images.decode_image(req.image, "image", c.limits))
    w, h = im.size
    size = (
        (max(1, round(w * req.upscaling_resize)), max(1, round(h * req.upscaling_resize)))
        if req.resize_mode == 0
        else (req.upscaling_resize_w, req.upscaling_resize_h)
    )
    if max(size) > 8192:
        raise AnimaError(f"an upscale to {size[0]}x{size[1]} is over 8192 px a side")
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / np.float32(255.0))[None]
    name = req.upscaler_1.strip()
    info = f"Upscaler: {name}"
    if name.lower() not in ("none", "lanczos", ""):
        model = UpscaleModel.load(c.service.resolve_upscaler(name))
        x = model(x)
        info = f"Upscaler: {model.describe()}"
    if tuple(x.shape[1:3]) != (size[1], size[0]):
        x = resize_images(x, size[0], size[1], "lanczos")
    return ExtraSingleImageResponse(html_info=info, image=images.b64_png(images.png_bytes(to_uint8(x)[0])))
