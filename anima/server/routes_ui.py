"""What the web UI asks while you type and before you run: completions, prompt lint findings,
a PNG's recipe, the hires pass plan and a control image's preprocessing. Thin routes over the
prompt tools, the PNG reader, the hires planner and the control preprocessors; nothing here
queues work."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from anima.errors import AnimaError
from anima.imageio import recipe_from_text
from anima.interop.comfyui.read import graph_from_text, has_graph
from anima.prompt_tools import analyze, prompt_tag
from anima.recipe import Recipe, changed_settings
from anima.server import controls, images
from anima.server.graphs import graph_recipe
from anima.server.routes_a1111 import ERRORS, Ctx
from anima.server.schemas import MAX_PROMPT_CHARS, PNGInfoRequest
from anima.server.settings_schema import SettingsIn
from anima.workflows.control_preprocess import PREPROCESSORS
from anima.workflows.hires import plan_passes

router = APIRouter(prefix="/api", tags=["web UI"])


class Completion(BaseModel):
    text: str = Field(description="what to insert")
    label: str
    kind: str = Field(description="artist or tag")


class Completions(BaseModel):
    items: list[Completion]


@router.get("/complete", response_model=Completions, responses=ERRORS)
def complete(c: Ctx, q: str = Query(..., min_length=1, max_length=200), limit: int = Query(12, ge=1, le=50)):
    """Completions of the word being typed: ``@xy`` -> artist names from the server's artist list,
    anything else -> tags from its tag list (a1111-tagcomplete CSV); [] when none is loaded."""
    items: list[Completion] = []
    if q.startswith("@"):
        if c.prompt_help.artists is not None and len(q) > 1:
            for name in c.prompt_help.artists.complete(q[1:], limit):
                items.append(Completion(text=prompt_tag(name), label=name, kind="artist"))
    elif c.prompt_help.tags is not None:
        for tag in c.prompt_help.tags.complete(q, limit):
            label = f"{tag.prompt_form}  ({tag.count})"
            items.append(Completion(text=tag.prompt_form, label=label, kind="tag"))
    return Completions(items=items)


class LintRequest(BaseModel):
    prompt: str = Field(..., max_length=MAX_PROMPT_CHARS)


class LintFinding(BaseModel):
    code: str
    severity: str
    message: str
    tag: str = ""


class LintResponse(BaseModel):
    findings: list[LintFinding]
    formatted: str


@router.post("/lint", response_model=LintResponse, responses=ERRORS)
def lint(req: LintRequest, c: Ctx) -> LintResponse:
    """The prompt linter's findings (the model card's conventions) and the fixed prompt."""
    result = analyze(req.prompt, artists=c.prompt_help.artists)
    fields = LintFinding.model_fields
    findings = [LintFinding(**{k: v for k, v in i.to_dict().items() if k in fields}) for i in result.issues]
    return LintResponse(findings=findings, formatted=result.formatted)


class PNGRecipe(BaseModel):
    format: str = Field(description="anima, a1111 or comfyui: whose metadata the recipe came from")
    recipe: dict[str, Any] = Field(description="the recipe as anima's JSON (anima-recipe/2)")
    settings: dict[str, Any] = Field(description="its workflow settings that differ from the defaults")
    runnable: bool = Field(description="anima runs its sampler and scheduler")
    problem: str | None = None


@router.post("/png-recipe", response_model=PNGRecipe, responses=ERRORS)
def png_recipe(req: PNGInfoRequest, c: Ctx) -> PNGRecipe:
    """The recipe an image carries (anima's own JSON, an A1111/Forge infotext, or a ComfyUI
    graph), for the page's PNG info panel: fill the form, or run it again."""
    chunks = images.text_chunks(req.image, "image", c.limits)
    problem = None
    if has_graph(chunks):  # a ComfyUI PNG: its graph planned as a native graph job would be
        fmt = "comfyui"
        recipe, _notes = graph_recipe(graph_from_text(chunks, "the image"), c.service)
    else:
        fmt = "anima" if "anima_recipe" in chunks else "a1111" if "parameters" in chunks else "unknown"
        recipe = recipe_from_text(chunks, "the image")
    try:
        recipe.validate(c.service.samplers(), c.service.schedulers())
    except AnimaError as exc:
        problem = str(exc)
    return PNGRecipe(
        format=fmt, recipe=recipe.to_dict(), settings=changed_settings(recipe), runnable=problem is None,
        problem=problem,
    )


class PlanRequest(BaseModel):
    width: int = Field(..., ge=16, le=16384)
    height: int = Field(..., ge=16, le=16384)
    settings: SettingsIn | None = None


class PlanResponse(BaseModel):
    sizes: list[list[int]] = Field(description="each pass's size, the first pass's included")
    description: str


@router.post("/plan", response_model=PlanResponse, responses=ERRORS)
def plan(req: PlanRequest, c: Ctx) -> PlanResponse:
    """The hires fix's passes for a size and settings, shown before running (checked against the
    server's limits like a real job)."""
    settings = req.settings.model_dump(exclude_none=True) if req.settings else {}
    recipe = Recipe.make("", width=req.width, height=req.height, **settings)
    h = recipe.hires
    passes = plan_passes(recipe.width, recipe.height, h.scale, max_step=h.max_step, max_side=h.max_side)
    c.limits.check_recipe(recipe)
    sizes = [[recipe.width, recipe.height], *([w, hh] for w, hh in passes.sizes)]
    text = passes.describe() if passes.sizes else f"one pass at {recipe.width}x{recipe.height}"
    return PlanResponse(sizes=sizes, description=text)


class PreprocessRequest(BaseModel):
    kind: str = Field(..., max_length=32, description="a preprocessor (ServerInfo.control_preprocessors)")
    image: str = Field(..., description="base64 image, optionally a data: URL")
    low: float = Field(0.1, ge=0, le=1, description="canny / lineart / scribble: low threshold")
    high: float = Field(0.2, ge=0, le=1, description="canny / lineart / scribble: high threshold")
    threshold: float = Field(0.5, ge=0, le=1, description="threshold: the luminance cut")


class PreprocessResponse(BaseModel):
    image: str = Field(description="the preprocessed image, a PNG data: URL")


@router.post("/preprocess", response_model=PreprocessResponse, responses=ERRORS)
def preprocess(req: PreprocessRequest, c: Ctx) -> PreprocessResponse:
    """A control image through a preprocessor, to preview it and send it as the unit's image
    (what a job's control unit receives is the image as sent: the page preprocesses here first)."""
    if req.kind not in PREPROCESSORS:  # before decoding anything
        raise AnimaError(f"unknown control preprocessor {req.kind!r}; choose from {', '.join(PREPROCESSORS)}")
    im = images.decode_image(req.image, "image", c.limits)
    done = controls.preprocess_image(im, req.kind, low=req.low, high=req.high, threshold=req.threshold)
    data = images.b64_png(images.png_bytes(done, compress_level=1))
    return PreprocessResponse(image=f"data:image/png;base64,{data}")
