"""What the nodes of a ComfyUI graph compute, as descriptions (no tensors).

Reading a graph evaluates it symbolically (`anima.interop.comfyui.evaluate`): a loader yields the
file it names, a LoRA node a model with one more LoRA, a sampler a `Sampled` latent that remembers
its model, prompts and settings, and so on. The planner (`anima.interop.comfyui.plan`) then turns
the description an output node receives into an anima recipe, or says in one line why it cannot.
Every value remembers the node that made it (`node`, as ``node 76 (KSampler)``) for those errors.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass

from anima.recipe.image_ops import ImageOp


@dataclass(frozen=True)
class Model:
    """A MODEL: the DiT file and what was put on it, in order."""

    unet: str  # file name under diffusion_models/ (or checkpoints/ for a checkpoint)
    node: str
    checkpoint: bool = False
    weight_dtype: str = "default"
    loras: tuple[tuple[str, float], ...] = ()  # model halves (strength_model)
    shift: float | None = None  # ModelSamplingAuraFlow; None: the model's 3.0
    guidance: str = "cfg"  # CFGZeroStar -> "cfg-zero-star"
    controls: tuple[Control, ...] = ()  # AnimaLLLiteApply nodes, in order


@dataclass(frozen=True)
class Patch:
    """A MODEL_PATCH from ModelPatchLoader (a file in model_patches/)."""

    name: str
    node: str


@dataclass(frozen=True)
class Control:
    """One AnimaLLLiteApply: its patch, control picture, optional mask, strength and window.

    `shift` is the shift of the model it was applied to: ComfyUI turns the percents into sigmas
    with that model's sampling, so a ModelSamplingAuraFlow placed after it does not move the window."""

    patch: Patch
    picture: Picture
    mask: Mask | PainterMask | None
    strength: float
    start: float
    end: float
    shift: float
    node: str


@dataclass(frozen=True)
class Clip:
    """A CLIP: the text encoder file and the text-encoder halves of LoraLoaders."""

    name: str
    node: str
    checkpoint: bool = False
    loras: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Vae:
    name: str
    node: str
    checkpoint: bool = False


@dataclass(frozen=True)
class Cond:
    """CONDITIONING from CLIPTextEncode, possibly zeroed by ConditioningZeroOut."""

    text: str
    clip: Clip
    node: str
    zeroed: bool = False


@dataclass(frozen=True)
class Canny:
    """ComfyUI's Canny node (comfy_extras/nodes_canny.py): kornia's canny on the RGB picture with
    these thresholds, the binary edges repeated to 3 channels."""

    low: float
    high: float
    node: str

    def text(self) -> str:
        return f"canny {self.low:g},{self.high:g}"


@dataclass(frozen=True)
class Invert:
    """ImageInvert (nodes.py): 1 - x."""

    node: str

    def text(self) -> str:
        return "invert"


@dataclass(frozen=True)
class Paint:
    """Painter (comfy_extras/nodes_painter.py): the painter RGBA file composited over the picture so
    far (LANCZOS-resized to it when the sizes differ). `file` is its name ('' when nothing was drawn:
    the picture passes unchanged); the planner replaces names by paths."""

    file: str
    node: str

    def text(self) -> str:
        return f"paint {self.file}" if self.file else "paint (nothing drawn)"


Filter = Canny | Invert | Paint


@dataclass(frozen=True)
class Fill:
    """A Painter's canvas without a base image: `width` x `height` of one colour (0..1 floats)."""

    width: int
    height: int
    rgb: tuple[float, float, float]


@dataclass(frozen=True)
class Picture:
    """An IMAGE that comes from a LoadImage file (or a Painter's plain canvas, `fill`, when `name` is
    empty), with what was done to it since, in order: resizes and crops (`ImageOp`) and pixel
    filters (`Filter`). Only resizes can stand before a VAEEncode (the recipe's ``init_resize``); a
    control image with any of them is a derived picture that the runner computes
    (`anima.jobs.comfy_pictures`)."""

    name: str  # LoadImage's file name ('' for a `fill` canvas)
    node: str
    size: tuple[int, int]  # (width, height) after `ops`
    ops: tuple[ImageOp | Filter, ...] = ()
    fill: Fill | None = None

    @property
    def filters(self) -> tuple[Filter, ...]:
        return tuple(op for op in self.ops if isinstance(op, Canny | Invert | Paint))

    @property
    def derived(self) -> bool:
        """Whether its pixels are not a file's as they are."""
        return bool(self.ops) or self.fill is not None


@dataclass(frozen=True)
class Mask:
    """A MASK from a file: LoadImage's alpha (``1 - alpha``) or a LoadImageMask channel."""

    name: str
    channel: str  # "alpha", "red", "green", "blue"
    node: str


@dataclass(frozen=True)
class PainterMask:
    """Painter's MASK: the painter file's alpha, LANCZOS-resized to `base` (the picture the Painter
    painted over); zeros of its size when `file` is ''."""

    base: Picture
    file: str
    node: str


@dataclass(frozen=True)
class Empty:
    """EmptyLatentImage / EmptySD3LatentImage."""

    width: int
    height: int
    batch: int
    node: str


@dataclass(frozen=True)
class Encoded:
    """VAEEncode of a picture."""

    picture: Picture
    vae: Vae
    node: str


@dataclass(frozen=True)
class Masked:
    """SetLatentNoiseMask."""

    latent: object
    mask: Mask
    node: str


@dataclass(frozen=True)
class Upscaled:
    """LatentUpscale / LatentUpscaleBy, to `width` x `height` latent cells."""

    latent: object
    method: str
    width: int
    height: int
    crop: str
    node: str


@dataclass(frozen=True)
class Sampling:
    """The settings of one KSampler / KSamplerAdvanced."""

    model: Model
    positive: Cond
    negative: Cond
    seed: int
    steps: int
    cfg: float
    sampler: str
    scheduler: str
    denoise: float = 1.0
    advanced: bool = False
    add_noise: bool = True
    start_step: int = 0
    end_step: int = 10_000
    leftover_noise: bool = False


@dataclass(frozen=True)
class Sampled:
    """A sampler's output latent."""

    sampling: Sampling
    latent: object  # its input latent
    node: str


@dataclass(frozen=True)
class Decoded:
    """VAEDecode / VAEDecodeTiled of a latent."""

    latent: object
    vae: Vae
    node: str
    tiled: bool = False


def content(value: object) -> object:
    """A value without the nodes that made it: two chains that compute the same thing are equal
    (two CLIPTextEncode nodes with one text, two loaders of one file)."""
    if is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__,) + tuple(
            content(getattr(value, f.name)) for f in fields(value) if f.name != "node"
        )
    if isinstance(value, tuple):
        return tuple(content(v) for v in value)
    return value


def latent_size(latent: object) -> tuple[int, int]:
    """(width, height) in pixels of a latent description."""
    if isinstance(latent, Empty):
        return latent.width - latent.width % 8, latent.height - latent.height % 8
    if isinstance(latent, Encoded):
        w, h = latent.picture.size
        return w - w % 8, h - h % 8
    if isinstance(latent, Upscaled):
        return latent.width * 8, latent.height * 8
    if isinstance(latent, Masked | Sampled):
        return latent_size(latent.latent)
    raise TypeError(type(latent).__name__)


def latent_batch(latent: object) -> int:
    if isinstance(latent, Empty):
        return latent.batch
    if isinstance(latent, Masked | Sampled | Upscaled):
        return latent_batch(latent.latent)
    return 1
