"""Request and response models. The OpenAPI document is generated from these, so they are the contract.

A1111 models follow the field names and shapes of the AUTOMATIC1111 1.10 API; they accept (and
report as ignored) any field anima does not use, because clients send every field A1111 knows.
Static bounds here are the absolute ones; the server's configured limits (`security.Limits`) are
usually tighter and answered with 400 and a message that names the limit.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from anima.server.settings_schema import SettingsIn

MAX_PROMPT_CHARS = 20_000  # absolute; the configured limit may be lower
MAX_SIDE = 8192


class ErrorResponse(BaseModel):
    """Every 4xx anima raises itself: one line that says what is wrong."""

    detail: str


# --------------------------------------------------------------------- A1111: generation
class _A1111Common(BaseModel):
    # Clients send every A1111 field; unknown ones are kept (to be reported in `info`), not refused.
    model_config = ConfigDict(extra="allow")

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS, description="omitted: the model card's negative prompt"
    )
    seed: int = Field(-1, ge=-1, le=2**64 - 1, description="-1: random")
    sampler_name: str | None = Field(None, max_length=64, description="A1111 label or ComfyUI name")
    sampler_index: str | None = Field(None, max_length=64, description="deprecated alias of sampler_name")
    scheduler: str | None = Field(None, max_length=64)
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=100)
    steps: int | None = Field(None, ge=1, le=1000)
    cfg_scale: float | None = Field(None, ge=0, le=100)
    width: int | None = Field(None, ge=16, le=MAX_SIDE)
    height: int | None = Field(None, ge=16, le=MAX_SIDE)
    shift: float | None = Field(None, gt=0, le=100, description="anima extension: flow shift")
    override_settings: dict[str, Any] | None = Field(
        None, description="only sd_model_checkpoint is honoured; other keys are noted as ignored"
    )
    send_images: bool = True
    save_images: bool = False


class Txt2ImgRequest(_A1111Common):
    pass


class Img2ImgRequest(_A1111Common):
    init_images: list[str] = Field(..., min_length=1, max_length=16, description="base64 images")
    denoising_strength: float = Field(0.75, ge=0, le=1)
    resize_mode: int = Field(0, ge=0, le=3, description="0 resize, 1 crop+resize, 2 resize+fill, 3 = 0")
    mask: str | None = Field(None, description="base64 mask; white = repaint")
    mask_blur: int | None = Field(None, ge=0, le=64)
    mask_blur_x: int = Field(4, ge=0, le=64)
    mask_blur_y: int = Field(4, ge=0, le=64)
    inpainting_fill: int = Field(1, ge=0, le=3, description="0 fill, 1 original, 2 noise, 3 nothing")
    inpaint_full_res: bool = Field(False, description="repaint only the masked region at full size")
    inpaint_full_res_padding: int = Field(32, ge=0, le=1024)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    include_init_images: bool = False


class GenerationResponse(BaseModel):
    """A1111's TextToImageResponse / ImageToImageResponse."""

    images: list[str] = Field(description="base64 PNGs (with metadata)")
    parameters: dict[str, Any]
    info: str = Field(description="JSON text: seeds, infotexts, notes about ignored fields")


# --------------------------------------------------------------------- A1111: state
class ProgressState(BaseModel):
    skipped: bool
    interrupted: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class ProgressResponse(BaseModel):
    progress: float = Field(ge=0, le=1)
    eta_relative: float
    state: ProgressState
    current_image: str | None = Field(None, description="base64 PNG preview of the running job")
    textinfo: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None = None


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class PNGInfoRequest(BaseModel):
    image: str = Field(..., description="base64 image, optionally a data: URL")


class PNGInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class OptionsUpdateResponse(BaseModel):
    updated: list[str]
    ignored: list[str]


# --------------------------------------------------------------------- native API
class RegionIn(BaseModel):
    """A regional prompt: its prompt and a rectangle x0, y0, x1, y1 in fractions of the image."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., max_length=MAX_PROMPT_CHARS)
    rect: tuple[float, float, float, float]


class RecipeIn(BaseModel):
    """The settings `anima generate` accepts; omitted ones take the Recipe defaults."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    size: str | None = Field(None, max_length=32, description="WxH or a preset name (square, portrait, ...)")
    width: int | None = Field(None, ge=16, le=MAX_SIDE)
    height: int | None = Field(None, ge=16, le=MAX_SIDE)
    steps: int | None = Field(None, ge=1, le=1000)
    cfg: float | None = Field(None, ge=0, le=100)
    sampler: str | None = Field(None, max_length=64)
    scheduler: str | None = Field(None, max_length=64)
    shift: float | None = Field(None, gt=0, le=100)
    seed: int | None = Field(None, ge=0, le=2**64 - 1, description="omitted: random")
    batch_size: int | None = Field(None, ge=1, le=64)
    denoise: float | None = Field(None, gt=0, le=1)
    model: str | None = Field(None, max_length=256)
    loras: list[tuple[str, float]] = Field(default_factory=list, max_length=16)
    settings: SettingsIn | None = Field(None, description="workflow settings by flat name (hires_scale, ...)")
    grid: list[str] = Field(
        default_factory=list, max_length=3, description="X/Y/Z grid axes as NAME=V1,V2 (a contact sheet)"
    )
    regions: list[RegionIn] = Field(default_factory=list, max_length=16, description="regional prompts")


class InpaintIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mask: str = Field(..., description="base64 mask image; white = repaint")
    blur: int = Field(4, ge=0, le=64)
    invert: bool = False


class ControlIn(BaseModel):
    """One ControlNet-LLLite unit (applied in the order given)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., max_length=256, description="a patch name from the server's model_patches")
    image: str = Field(..., description="base64 control image")
    mask: str | None = Field(None, description="base64 mask for inpainting patches; white = repaint")
    strength: float = Field(1.0, ge=-10, le=10)
    start: float = Field(0.0, ge=0, le=1, description="fraction of the run the unit starts acting at")
    end: float = Field(1.0, ge=0, le=1, description="fraction of the run it stops acting after")


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipe: RecipeIn | None = Field(None, description="the settings; or give a ComfyUI graph instead")
    graph: dict[str, Any] | None = Field(
        None,
        description="a ComfyUI graph (API format, or a UI workflow) with one SaveImage output; its "
        "model and LoRA names are looked up among the served ones",
    )
    n_iter: int = Field(1, ge=1, le=100, description="run the recipe this many times (seed + i)")
    init_image: str | None = Field(None, description="base64 image: img2img at recipe.denoise")
    reference_image: str | None = Field(
        None, description="base64 image: reference editing (with an Edit LoRA), settings.reference_strength"
    )
    inpaint: InpaintIn | None = None
    controls: list[ControlIn] = Field(default_factory=list, max_length=8, description="LLLite control units")
    output_name: str | None = Field(
        None, max_length=128, description="subfolder of the outputs folder (plain names only)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> JobCreate:
        if (self.recipe is None) == (self.graph is None):
            raise ValueError("give either recipe or graph")
        if self.graph is not None and (self.init_image is not None or self.inpaint is not None):
            raise ValueError("a graph names its own images; init_image and inpaint go with a recipe")
        return self


JobStatus = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]


class JobOut(BaseModel):
    id: str
    status: JobStatus
    kind: str
    created: float
    started: float | None
    finished: float | None
    recipe: dict[str, Any]
    settings: dict[str, Any] = Field(description="its workflow settings that differ from their defaults")
    n_iter: int
    outputs: list[str] = Field(description="output paths relative to the outputs folder")
    urls: list[str]
    error: str | None
    notes: list[str]
    step: int
    steps: int
    position: int | None = Field(None, description="place in the queue (0 = next)")
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="role (init, mask, reference, control0-image, ...) -> stored image URL",
    )


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    offset: int
    limit: int


class ModelDefaults(BaseModel):
    name: str
    demo: bool = Field(description="the bundled demo model (tiny, coloured shapes only)")
    defaults: dict[str, Any] = Field(description="recipe fields and flat settings this model starts from")


class Choices(BaseModel):
    guidances: list[str]
    hires_upscalers: list[str]
    tiled_vae_modes: list[str]
    inpaint_areas: list[str]
    grid_axes: list[str]
    region_overlaps: list[str] = Field(default_factory=list)
    lora_key_rules: list[str] = Field(default_factory=list)
    quality_presets: list[dict[str, str]] = Field(description="name, positive_prefix, negative")
    presets: dict[str, dict[str, Any]] = Field(description="name -> recipe fields and settings (turbo)")


class ServerInfo(BaseModel):
    models: list[str]
    current_model: str
    model_info: list[ModelDefaults] = Field(default_factory=list)
    notice: str | None = Field(None, description="a banner line (e.g. the demo model is in use)")
    loras: list[str]
    samplers: list[str]
    schedulers: list[str]
    control_models: list[str] = Field(default_factory=list, description="ControlNet-LLLite patches (names)")
    control_preprocessors: list[str] = Field(default_factory=list, description="POST /api/preprocess kinds")
    choices: Choices | None = None
    prompt_help: dict[str, bool] = Field(default_factory=dict, description="artists / tags lists loaded")
    size_presets: dict[str, list[int]] = Field(description="name -> [width, height]")
    defaults: dict[str, Any]
    setting_defaults: dict[str, Any] = Field(default_factory=dict, description="flat setting -> default")
    limits: dict[str, int]


class WorkerOut(BaseModel):
    """One generation worker: the server's own (local) or a Ray actor."""

    name: str
    kind: Literal["local", "ray"]
    state: str = Field(description="starting, idle, busy, restarting or dead")
    device: str
    pid: int | None = None
    node: str | None = Field(None, description="host name of the worker's machine (Ray)")
    model: str | None = Field(None, description="the model it holds loaded")
    job: str | None = Field(None, description="id of the job it is running")
    step: int = 0
    steps: int = 0
    jobs_done: int = 0
    restarts: int = Field(0, description="times its process died (Ray restarts it)")


class WorkersOut(BaseModel):
    mode: Literal["local", "ray"]
    workers: list[WorkerOut]
    queued: int
    running: int
