"""The sd-webui-controlnet API's listing endpoints under /controlnet, so its clients (webuiapi's
``controlnet_model_list()`` and friends) find the served LLLite patches and preprocessors."""

from __future__ import annotations

from fastapi import APIRouter

from anima.server.routes_a1111 import ERRORS, Ctx
from anima.workflows.control_preprocess import A1111_MODULES

router = APIRouter(prefix="/controlnet", tags=["A1111 compatible"])


@router.get("/version", responses=ERRORS)
def version() -> dict[str, int]:
    return {"version": 2}


@router.get("/model_list", responses=ERRORS)
def model_list(c: Ctx) -> dict[str, list[str]]:
    """The patches in the server's model_patches folders (names as the units' ``model``)."""
    return {"model_list": sorted(c.service.control_patches())}


@router.get("/module_list", responses=ERRORS)
def module_list() -> dict[str, list[str]]:
    """The preprocessors an A1111 unit may name (``module``)."""
    return {"module_list": sorted(A1111_MODULES)}
