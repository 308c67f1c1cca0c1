"""`anima generate`: flags -> Recipe -> Pipeline -> PNGs with metadata.

Order matters for "bad input loses nothing": every flag, the output path and the model paths
are checked before any model is loaded or any file is written.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from anima.errors import AnimaError


def add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt_pos", nargs="?", metavar="PROMPT", help="the prompt")
    p.add_argument("--prompt", "-p", help="the prompt (alternative to the positional argument)")
    p.add_argument("--negative-prompt", "-n", help="negative prompt (default: the model card's)")
    p.add_argument("--width", "-W", type=int)
    p.add_argument("--height", "-H", type=int)
    p.add_argument("--size", help="WxH or a preset name (square, portrait, landscape, tall, wide, ...)")
    p.add_argument("--steps", type=int)
    p.add_argument("--cfg", type=float)
    p.add_argument("--sampler")
    p.add_argument("--scheduler")
    p.add_argument("--shift", type=float)
    p.add_argument("--seed", type=int, help="random when omitted (always printed and saved)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--init-image", type=Path, help="img2img: start from this image")
    p.add_argument("--denoise", type=float, help="img2img strength in (0, 1]")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--dtype", default="auto", help="fp32, bf16, fp16 or auto")
    p.add_argument("--output", "-o", type=Path, help="OUT.png (a batch writes OUT_0.png, OUT_1.png, ...)")
    p.add_argument("--from-png", type=Path, help="regenerate from the recipe stored in a PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


_RECIPE_FLAGS = (
    "negative_prompt", "width", "height", "steps", "cfg", "sampler", "scheduler", "shift", "seed",
    "batch_size", "denoise",
)  # fmt: skip


def recipe_from_args(args: argparse.Namespace):
    """Flags (and --from-png) -> a validated Recipe. Flags given explicitly win over the PNG."""
    from anima import samplers, schedules
    from anima.imageio import read_recipe
    from anima.recipe import Recipe, parse_size

    base = read_recipe(args.from_png) if args.from_png else None
    prompt = args.prompt if args.prompt is not None else args.prompt_pos
    if args.prompt is not None and args.prompt_pos is not None:
        raise AnimaError("give the prompt either as an argument or with --prompt, not both")
    changes = {k: getattr(args, k) for k in _RECIPE_FLAGS if getattr(args, k) is not None}
    if args.size:
        if args.width is not None or args.height is not None:
            raise AnimaError("give either --size or --width/--height, not both")
        changes["width"], changes["height"] = parse_size(args.size)
    if prompt is not None:
        changes["prompt"] = prompt
    if base is None:
        if "prompt" not in changes:
            raise AnimaError('no prompt: anima generate "1girl, ..." (or --from-png IMAGE)')
        recipe = Recipe(**changes)
    else:
        recipe = base.with_(**changes)
    if args.seed is None and base is None:
        recipe = recipe.with_(seed=secrets.randbits(32))
    recipe.validate(samplers.SAMPLERS.keys(), schedules.SCHEDULERS.keys())
    return recipe


def run_generate(args: argparse.Namespace) -> int:
    from anima.imageio import output_paths, save_png
    from anima.model_selection import resolve_files
    from anima.precision import SHORT_NAMES, parse_dtype, resolve_dtype

    recipe = recipe_from_args(args)
    init = _load_init_image(args.init_image, recipe) if args.init_image else None
    if init is None and recipe.denoise < 1.0:
        raise AnimaError("--denoise below 1 needs --init-image")
    if args.dtype != "auto":
        parse_dtype(args.dtype)
    out = args.output or _default_output(recipe.seed)
    if out.suffix.lower() != ".png":
        raise AnimaError(f"--output must end in .png, got '{out}'")
    if out.parent.exists() and not out.parent.is_dir():
        raise AnimaError(f"{out.parent}: not a folder")
    files = resolve_files(args)  # checks the paths exist and are the right kinds (headers only)

    import torch

    from anima.pipeline import Pipeline

    device = _device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if files.diffusers is not None:
        pipe = Pipeline.from_pretrained(files.diffusers, device=device, dtype=dtype)
    else:
        pipe = Pipeline.from_files(
            files.dit, files.text_encoder, files.vae,
            qwen_tokenizer=files.qwen_tokenizer, t5_tokenizer=files.t5_tokenizer,
            device=device, dtype=dtype,
        )  # fmt: skip
    recipe = recipe.with_(dtype=SHORT_NAMES[dtype])
    print(f"seed: {recipe.seed}", file=sys.stderr)
    bar = _progress_bar(args.no_progress)
    try:
        result = pipe.generate(recipe, init_image=init, progress=bar)
    finally:
        if hasattr(bar, "close"):
            bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = output_paths(out, recipe.batch_size)
    for i, (path, img) in enumerate(zip(paths, result.uint8(), strict=True)):
        extra = {"batch_index": i} if recipe.batch_size > 1 else None
        save_png(path, img, result.recipes[i], extra_json=extra)
        print(path)
    del torch
    return 0


def _device(name: str):
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError:
        raise AnimaError(f"unknown device '{name}'; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AnimaError("--device cuda asked for, but torch sees no CUDA GPU")
    return dev


def _default_output(seed: int) -> Path:
    base = Path("outputs")
    n = 0
    while True:
        p = base / f"anima_{seed}_{n:04d}.png"
        if not p.exists() and not p.with_name(p.stem + "_0.png").exists():
            return p
        n += 1


def _load_init_image(path: Path, recipe):
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except FileNotFoundError:
        raise AnimaError(f"{path}: init image not found") from None
    except (UnidentifiedImageError, OSError):
        raise AnimaError(f"{path}: not a readable image") from None
    if im.size != (recipe.width, recipe.height):
        raise AnimaError(
            f"{path}: init image is {im.size[0]}x{im.size[1]} but the size is "
            f"{recipe.width}x{recipe.height}; pass --size {im.size[0]}x{im.size[1]} or resize the image"
        )
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None]


def _progress_bar(disabled: bool):
    if disabled:
        return None
    from tqdm import tqdm

    state: dict = {}

    def update(step: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc="sampling", unit="step", file=sys.stderr)
        bar = state["bar"]
        bar.update(step - bar.n)

    def close() -> None:
        if "bar" in state:
            state["bar"].close()

    update.close = close  # type: ignore[attr-defined]
    return update
