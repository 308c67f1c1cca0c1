"""Upscaler models (ESRGAN / RealESRGAN, RCAN, SwinIR, DAT, SPAN, ...) loaded with spandrel.

spandrel (the loader ComfyUI, A1111 and Forge use) detects the architecture from the weights of a
``.pth`` / ``.pt`` / ``.ckpt`` / ``.safetensors`` file. It is an optional dependency (``pip install
'anima[upscale]'``), imported only when a model upscaler is used. A file it cannot identify, or a
model that is not a single-image RGB model (an inpainting model such as LaMa, a grayscale model),
is refused with one line.

Precision: fp32 on a CPU, always (CPUs need not have fast half floats). On a GPU the model runs in
bf16 when its architecture supports it, else fp16 when that is supported, else fp32 (spandrel's
``supports_bfloat16`` / ``supports_half`` flags per architecture).

Inference is tiled (`anima.workflows.tiled_upscale`: 512 px tiles, 32 px feathered overlap, tile
halved on out-of-memory); an image within one tile is a single untiled call.
"""

from __future__ import annotations

from pathlib import Path

import torch

from anima.errors import AnimaError
from anima.workflows.tiled_upscale import DEFAULT_OVERLAP, DEFAULT_TILE, shrinking_tiles, tiled_apply

INSTALL_HINT = "upscaler models need spandrel: pip install 'anima[upscale]'"


def _spandrel():
    try:
        import spandrel
    except ImportError as exc:
        raise AnimaError(f"{INSTALL_HINT} ({exc})") from None
    return spandrel


def model_dtype(device: torch.device, supports_bf16: bool, supports_fp16: bool) -> torch.dtype:
    """fp32 on a CPU; on an accelerator bf16, else fp16, where the architecture supports it."""
    if device.type == "cpu":
        return torch.float32
    if supports_bf16:
        return torch.bfloat16
    return torch.float16 if supports_fp16 else torch.float32


class UpscaleModel:
    """One loaded upscaler model. ``model(images)`` upscales [B, H, W, 3] float images in [0, 1]."""

    def __init__(self, descriptor, path: Path) -> None:
        self._descriptor = descriptor
        self.path = Path(path)
        self.scale: int = int(descriptor.scale)
        self.architecture: str = str(descriptor.architecture.name)
        self.dtype = torch.float32
        self.device = torch.device("cpu")

    @classmethod
    def load(cls, path: str | Path) -> UpscaleModel:
        """Load on the CPU in fp32; one-line errors for unreadable files and non-upscalers."""
        path = Path(path)
        if not path.is_file():
            raise AnimaError(f"upscaler model {path} not found", setting="hires_upscaler")
        spandrel = _spandrel()
        try:
            descriptor = spandrel.ModelLoader(torch.device("cpu")).load_from_file(path)
        except spandrel.UnsupportedModelError:
            raise AnimaError(
                f"{path.name}: not an upscaler model spandrel knows (no architecture matches its weights)",
                setting="hires_upscaler",
            ) from None
        except Exception as exc:  # pickle, zip or safetensors errors of a damaged or foreign file
            raise AnimaError(f"{path.name}: cannot read it as a model file ({type(exc).__name__})") from None
        if not isinstance(descriptor, spandrel.ImageModelDescriptor):
            raise AnimaError(
                f"{path.name}: a {descriptor.architecture.name} {descriptor.purpose} model, not an "
                "image-to-image upscaler",
                setting="hires_upscaler",
            )
        if descriptor.input_channels != 3 or descriptor.output_channels != 3:
            raise AnimaError(
                f"{path.name}: takes {descriptor.input_channels} and gives {descriptor.output_channels} "
                "channels; an upscaler for RGB images is needed",
                setting="hires_upscaler",
            )
        return cls(descriptor.eval(), path)

    def to(self, device: torch.device | str) -> UpscaleModel:
        """Move to `device`, in the precision `model_dtype` chooses there."""
        device = torch.device(device)
        d = self._descriptor
        dtype = model_dtype(device, bool(d.supports_bfloat16), bool(d.supports_half))
        self._descriptor = d.to(device=device, dtype=dtype)
        self.device, self.dtype = device, dtype
        return self

    def _one(self, image: torch.Tensor) -> torch.Tensor:
        # spandrel's call pads to the architecture's size rules, crops back and clamps to [0, 1].
        return self._descriptor(image.to(self.device, self.dtype)).float()

    @torch.inference_mode()
    def __call__(
        self, images: torch.Tensor, *, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP
    ) -> torch.Tensor:
        """[B, H, W, 3] in [0, 1] -> [B, H*scale, W*scale, 3] float32 on the CPU."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise AnimaError(f"an upscaler takes [B, H, W, 3] images, got {tuple(images.shape)}")
        outs = []
        for one in images:
            x = one.permute(2, 0, 1)[None].float().contiguous()  # NCHW memory, as a model expects
            y = shrinking_tiles(lambda t, x=x: tiled_apply(self._one, x, self.scale, t, overlap), tile)
            outs.append(y[0].permute(1, 2, 0).clamp(0, 1).cpu())
        return torch.stack(outs)

    def describe(self) -> str:
        return f"{self.path.name}: {self.architecture} {self.scale}x"
