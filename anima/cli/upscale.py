"""`anima upscale IMAGE --model FILE|NAME`, and the upscaler-model checks of `anima generate`.

Names resolve like LoRA names (`anima.weights.upscale_models`): a path, else a file in the
``upscale_models/`` (or A1111's ``ESRGAN/``) folder of the models folder or a ComfyUI install. The
model is loaded and identified (spandrel) before any Anima model, so a wrong file is one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from anima.errors import AnimaError


def add_upscale_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", type=Path, help="the image to upscale")
    p.add_argument("--model", required=True, help="upscaler model: a path or a file in upscale_models/")
    p.add_argument("--output", "-o", type=Path, help="OUT.png (default: IMAGE_<model>.png beside the image)")
    p.add_argument("--scale", type=float, help="final size factor (default: the model's own); Lanczos to it")
    p.add_argument("--tile", type=int, default=512, help="tile size in pixels (halved on out-of-memory)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--models-dir", type=Path, help="models folder (default: $ANIMA_MODELS_DIR)")
    p.add_argument("--comfyui", type=Path, action="append", default=[], help="a ComfyUI install to search")


def upscaler_resolver(args: argparse.Namespace) -> Callable[[str], Path]:
    """name -> file, searching the upscaler folders of the places `anima models` searches (lazily)."""
    from anima.cli.model_selection import search_places
    from anima.weights.upscale_models import resolve_upscaler, upscaler_files

    files: list[Path] = []

    def resolve(name: str) -> Path:
        if Path(name).is_file():
            return Path(name)
        if not files:
            places = search_places(args)
            roots = [places["models_dir"], *(Path(c) / "models" for c in places["comfyui_dirs"])]
            files.extend(upscaler_files(r for r in roots if r is not None))
        return resolve_upscaler(name, files)

    return resolve


def check_hires_upscaler(args: argparse.Namespace, recipe, resolve: Callable[[str], Path]):
    """The recipe with its upscaler model found, identified and recorded (name or absolute path, and
    the file's digest); a recorded digest that no longer matches is refused. Unchanged otherwise."""
    from anima.workflows.init_image import file_digest
    from anima.workflows.upscale_model import UpscaleModel

    h = recipe.hires
    if not (h.on and h.uses_model):
        return recipe
    path = resolve(h.upscaler)
    digest = file_digest(path)
    if h.upscaler_hash and h.upscaler_hash != digest:
        raise AnimaError(
            f"upscaler model {path.name} has changed since the image was made; give --hires-upscaler again",
            setting="hires_upscaler",
        )
    UpscaleModel.load(path)  # identified now: a file that is no upscaler fails before any model loads
    name = str(path.resolve()) if Path(h.upscaler).is_file() else h.upscaler
    return recipe.with_(hires=h.with_(upscaler=name, upscaler_hash=digest))


def run_upscale(args: argparse.Namespace) -> int:
    import torch

    from anima.imageio import atomic_write
    from anima.workflows.init_image import load_rgb
    from anima.workflows.resample import resize_images
    from anima.workflows.upscale_model import UpscaleModel

    if args.tile < 128:
        raise AnimaError(f"--tile must be at least 128 pixels, got {args.tile}")
    if args.scale is not None and not 0 < args.scale <= 16:
        raise AnimaError(f"--scale must be in (0, 16], got {args.scale}")
    out = args.output
    path = upscaler_resolver(args)(args.model)
    if out is None:
        out = args.image.with_name(f"{args.image.stem}_{path.stem}.png")
    if out.suffix.lower() != ".png":
        raise AnimaError(f"--output must end in .png, got '{out}'")
    image = load_rgb(args.image)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise AnimaError(f"unknown device '{args.device}'; use cpu, cuda or cuda:N") from None
    model = UpscaleModel.load(path).to(device)
    result = model(image, tile=args.tile)
    if args.scale is not None:
        h, w = image.shape[1:3]
        size = (max(1, round(w * args.scale)), max(1, round(h * args.scale)))
        result = resize_images(result, *size, "lanczos")
    print(f"{model.describe()}: {image.shape[2]}x{image.shape[1]} -> {result.shape[2]}x{result.shape[1]}",
          file=sys.stderr)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    _save(out, result, atomic_write)
    print(out)
    return 0


def _save(out: Path, images, atomic_write) -> None:
    from PIL import Image

    from anima.imageio import to_uint8

    im = Image.fromarray(to_uint8(images)[0])
    atomic_write(out, lambda fh: im.save(fh, format="PNG"))
