"""Generate with the DEMO model and score the images with the pixel evaluator.

Used by ``python -m anima.demo.evaluate``, the demo build and the LoRA experiment. Prompts: one per
held-out combination (never seen in training), alternating tag and sentence style; or, with
`new_shape`, prompts for the held-back "star" in `count` combinations.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from anima.demo import RECIPE_DEFAULTS, dataset, default_model
from anima.demo.evaluate import Detection, Score, detect, score
from anima.errors import AnimaError
from anima.imageio import save_png, to_uint8
from anima.lora.apply import apply_loras, pipeline_models
from anima.lora.file import load_lora
from anima.pipeline import Pipeline
from anima.recipe import Recipe


def load_demo_pipeline(model_dir: str | Path | None = None):
    """A `Pipeline` (fp32, CPU) over the demo files."""

    m = default_model(model_dir)
    return Pipeline.from_files(
        m.dit, m.text_encoder, m.vae, tokenizer_dir=m.tokenizer_dir, device="cpu", dtype="fp32"
    )


def prompts_for(
    new_shape: bool, count: int, seed: int = 1, split: str = "held-out"
) -> list[tuple[tuple[str, str, str, str], str]]:
    """`count` (combination, prompt) pairs: held-out combinations (the score), training ones
    (``split="train"``, for choosing sampling settings without looking at the score), or stars."""
    if not new_shape:
        train, held = dataset.split_combos()
        if split == "train":
            combos = list(train)
            random.Random(seed).shuffle(combos)
            return dataset.eval_prompts(sorted(combos[:count]), seed)
        if count > len(held):
            raise AnimaError(f"there are only {len(held)} held-out prompts")
        return dataset.eval_prompts(held[:count], seed)
    combos = dataset.all_combos([dataset.NEW_SHAPE])
    random.Random(seed).shuffle(combos)
    return dataset.eval_prompts(sorted(combos[:count]), seed)


def parse_lora(spec: str) -> tuple[str, float]:
    path, _, strength = spec.rpartition(":")
    if path and _is_number(strength):
        return path, float(strength)
    return spec, 1.0


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def evaluate_model(
    *,
    model_dir: str | Path | None = None,
    loras: Sequence[str] = (),
    new_shape: bool = False,
    count: int = 50,
    steps: int | None = None,
    cfg: float | None = None,
    sampler: str | None = None,
    seed: int = 1000,
    save_dir: str | Path | None = None,
    report: Callable[[str], None] | None = None,
    pipeline=None,
    split: str = "held-out",
) -> Score:
    """Generate one image per prompt and score it. For `new_shape`, `Score.shape` counts stars found."""

    pipe = pipeline or load_demo_pipeline(model_dir)
    applied = _apply_loras(pipe, loras)
    try:
        prompts = prompts_for(new_shape, count, split=split)
        defaults = dict(RECIPE_DEFAULTS)
        defaults.update(
            {k: v for k, v in (("steps", steps), ("cfg", cfg), ("sampler", sampler)) if v is not None}
        )
        detections: list[Detection] = []
        rows = []
        for i, (combo, text) in enumerate(prompts):
            recipe = Recipe(prompt=text, seed=seed + i, **defaults)
            image = pipe.generate(recipe).images[0].numpy()
            d = detect(image)
            detections.append(d)
            rows.append((text, combo, d))
            if report is not None:
                mark = "ok " if d.matches(combo) else "BAD"
                report(f"{mark} {text!r}: saw {d.colour} {d.shape}, {d.background} background, {d.position}")
            if save_dir is not None:
                _save(Path(save_dir), i, image, recipe)
    finally:
        if applied is not None:
            applied.remove()
    if save_dir is not None:
        _write_csv(Path(save_dir) / "detections.csv", rows)
    return score(detections, [c for c, _ in prompts])


def _apply_loras(pipe, loras: Sequence[str]):
    if not loras:
        return None

    files = []
    for spec in loras:
        path, strength = parse_lora(spec)
        files.append((load_lora(path), strength))
    return apply_loras(pipeline_models(pipe), files)


def _save(folder: Path, i: int, image, recipe) -> None:

    save_png(folder / f"{i:03d}.png", to_uint8(image[None])[0], recipe)


def _write_csv(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt", "want", "colour", "shape", "background", "position", "fill", "solidity", "ok"])
        for text, combo, d in rows:
            w.writerow(
                [
                    text,
                    " / ".join(combo),
                    d.colour,
                    d.shape,
                    d.background,
                    d.position,
                    f"{d.fill:.3f}",
                    f"{d.solidity:.3f}",
                    d.matches(combo),
                ]
            )
