"""Teach the DEMO model to draw where a control image says: ``python -m anima.demo.control_cli``.

A position-control ControlNet-LLLite patch, trained with ``anima train`` (``network = "lllite"``):
each training image is paired with a control image showing the same shape as a white silhouette on
black at the same place, and most captions name a *wrong* position (or none), so the position has
to come from the control. The evaluator (`anima.demo.evaluate`) then reads the position back from
images made with held-out prompts whose position word disagrees with the control image, without
and with the patch: how often the shape lands where the control says, and how often where the prompt
says.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from anima.demo import RECIPE_DEFAULTS, dataset, default_model
from anima.demo.evaluate import detect
from anima.demo.runner import load_demo_pipeline
from anima.recipe import ControlUnit, Recipe
from anima.train.config import TrainConfig
from anima.train.trainer import Trainer
from anima.workflows.control_sources import ControlImage

POSITIONS = list(dataset.POSITIONS)


def control_scene(scene: dataset.Scene) -> dataset.Scene:
    """The control image of a scene: its shape as a white silhouette on black, at the same place."""
    return dataset.Scene("white", scene.shape, "black", scene.position, scene.dx, scene.dy, scene.scale)


def write_dataset(root: Path, *, per_combo: int = 2, seed: int = 21) -> int:
    """``root/images`` (image + caption) and ``root/control`` (same names); captions mostly name a
    wrong position (60%) or none (20%), the right one only 20% of the time."""
    images, control = root / "images", root / "control"
    images.mkdir(parents=True, exist_ok=True)
    control.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train, _ = dataset.split_combos()
    n = 0
    for combo in train:
        for _ in range(per_combo):
            scene = dataset.random_scene(combo, rng)
            roll = rng.random()
            said = scene.position
            if roll < 0.6:
                said = rng.choice([p for p in POSITIONS if p != scene.position])
            told = dataset.Scene(scene.colour, scene.shape, scene.background, said)
            caption = (dataset.tag_caption(told, rng, drop_position=roll >= 0.8) if rng.random() < 0.5
                       else dataset.sentence_caption(told, rng, drop_position=roll >= 0.8))  # fmt: skip
            stem = f"{n:05d}"
            dataset.render(scene).save(images / f"{stem}.png")
            (images / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")
            dataset.render(control_scene(scene)).save(control / f"{stem}.png")
            n += 1
    return n


def train_position_patch(work: Path, *, steps: int = 400, batch_size: int = 16, lr: float = 2e-3,
                         threads: int = 0, say=print) -> tuple[Path, float]:  # fmt: skip
    """Render the dataset, train the patch; returns (patch file, minutes including caching)."""
    m = default_model()
    data = work / "position-data"
    if not (data / "images").is_dir():
        write_dataset(data)
    cfg = TrainConfig(
        dit=str(m.dit), text_encoder=str(m.text_encoder), vae=str(m.vae), tokenizer_dir=str(m.tokenizer_dir),
        data_dir=str(data / "images"), control_dir=str(data / "control"), cache_dir=str(work / "cache"),
        resolution=64, bucket_step=16, max_aspect=1.0, caption_dropout=0.1, network="lllite",
        lllite_cond_dim=32, lllite_cond_emb_dim=32, lllite_mlp_dim=32, lllite_resblocks=1,
        lr=lr, weight_decay=0.0, warmup_steps=20, steps=steps, batch_size=batch_size, shift=3.0,
        precision="fp32", device="cpu", threads=threads, output_dir=str(work / "position-patch"),
        output_name="demo-position-lllite", save_dtype="fp32", save_every=0, log_every=25, log_backend="csv",
    )  # fmt: skip
    every = max(steps // 10, 1)

    def on_step(info) -> None:
        if info.step % every == 0 or info.step == info.total:
            say(f"  step {info.step}/{info.total} loss {info.loss:.4f}, ETA {info.eta_seconds / 60:.1f} min")

    t0 = time.perf_counter()
    path = Trainer(cfg, on_step=on_step, on_message=say).run()
    return path, (time.perf_counter() - t0) / 60


@dataclass(frozen=True)
class Adherence:
    total: int
    at_control: int  # the shape is where the control image says
    at_prompt: int  # ... where the prompt's (disagreeing) position word says
    rest_right: int  # colour, shape and background as prompted

    def summary(self) -> str:
        n = max(self.total, 1)
        return (f"position as the control says {self.at_control}/{n} = {100 * self.at_control / n:.0f}%, "
                f"as the prompt says {self.at_prompt}/{n} = {100 * self.at_prompt / n:.0f}%, "
                f"colour+shape+background right {100 * self.rest_right / n:.0f}%")  # fmt: skip


def evaluate(patch: Path | None, *, count: int = 50, seed: int = 1000, pipeline=None) -> Adherence:
    """Held-out prompts, each with a control image at another position than its prompt names."""
    pipe = pipeline or load_demo_pipeline()
    _, held = dataset.split_combos()
    at_control = at_prompt = rest = 0
    prompts = dataset.eval_prompts(held[:count], seed=1)
    for i, (combo, text) in enumerate(prompts):
        colour, shape, background, said = combo
        where = POSITIONS[(POSITIONS.index(said) + 1 + i % 4) % len(POSITIONS)]
        recipe = Recipe(prompt=text, seed=seed + i, **RECIPE_DEFAULTS)
        controls = None
        if patch is not None:
            recipe = recipe.with_(controls=(ControlUnit(str(patch)),))
            image = dataset.render(control_scene(dataset.Scene(colour, shape, background, where)))
            controls = [ControlImage(_tensor(image))]
        d = detect(pipe.generate(recipe, controls=controls).images[0].numpy())
        at_control += d.position == where
        at_prompt += d.position == said
        rest += (d.colour, d.shape, d.background) == (colour, shape, background)
    return Adherence(len(prompts), at_control, at_prompt, rest)


def _tensor(image):
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.float32) / np.float32(255.0))[None]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anima.demo.control_cli", description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "anima-demo-control")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--count", type=int, default=50, help="held-out prompts to evaluate")
    p.add_argument("--patch", type=Path, help="evaluate this patch instead of training one")
    args = p.parse_args(argv)
    patch = args.patch
    if patch is None:
        patch, minutes = train_position_patch(args.work, steps=args.steps, threads=args.threads)
        print(f"trained {patch} in {minutes:.1f} min")
    pipe = load_demo_pipeline()
    print(f"without the patch: {evaluate(None, count=args.count, pipeline=pipe).summary()}")
    print(f"with the patch:    {evaluate(patch, count=args.count, pipeline=pipe).summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
