"""Teach the DEMO model a new shape word with a LoRA: ``python -m anima.demo.lora_cli``.

The demo model never saw a star: its tokenizers know the word, but the adapter's embedding of it is
still the random initial one and the DiT has never drawn a concave shape. This command renders a
small star dataset (every colour / background / position), trains a LoRA on the demo model with
``anima train`` (DiT attention + MLP, plus the LLM adapter), and then asks the evaluator how often
"star" prompts give a star without and with the LoRA.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from anima.demo import dataset, default_model
from anima.demo.runner import evaluate_model
from anima.train.config import TrainConfig
from anima.train.trainer import Trainer


def train_star_lora(
    work: Path,
    *,
    model_dir: Path | None = None,
    steps: int = 400,
    rank: int = 16,
    batch_size: int = 16,
    lr: float = 1e-3,
    per_combo: int = 2,
    threads: int = 0,
    say=print,
) -> tuple[Path, float]:
    """Render the star dataset, train the LoRA; returns (LoRA file, training minutes incl. caching)."""

    m = default_model(model_dir)
    data = work / "star-data"
    if not data.is_dir():
        dataset.write_dataset(data, dataset.all_combos([dataset.NEW_SHAPE]), per_combo=per_combo, seed=11)
    cfg = TrainConfig(
        dit=str(m.dit),
        text_encoder=str(m.text_encoder),
        vae=str(m.vae),
        tokenizer_dir=str(m.tokenizer_dir),
        data_dir=str(data),
        resolution=64,
        bucket_step=16,
        max_aspect=1.0,
        caption_dropout=0.1,
        network="lora",
        rank=rank,
        alpha=float(rank),
        train_adapter=True,
        lr=lr,
        weight_decay=0.0,
        warmup_steps=20,
        steps=steps,
        batch_size=batch_size,
        shift=3.0,
        precision="fp32",
        device="cpu",
        threads=threads,
        output_dir=str(work / "star-lora"),
        output_name="demo-star",
        save_every=100,
        log_every=25,
        log_backend="csv",
    )
    every = max(steps // 10, 1)

    def on_step(info) -> None:
        if info.step % every == 0 or info.step == info.total:
            say(f"  step {info.step}/{info.total} loss {info.loss:.4f}, ETA {info.eta_seconds / 60:.1f} min")

    t0 = time.perf_counter()
    path = Trainer(cfg, on_step=on_step, on_message=say).run()
    return path, (time.perf_counter() - t0) / 60


def main(argv: list[str] | None = None) -> int:

    p = argparse.ArgumentParser(prog="python -m anima.demo.lora_cli", description=__doc__.split("\n")[0])
    p.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "anima-demo-star", help="scratch folder"
    )
    p.add_argument("--model-dir", type=Path, help="demo model folder (default: the bundled one)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--count", type=int, default=50, help="star prompts to evaluate")
    args = p.parse_args(argv)
    lora, minutes = train_star_lora(
        args.work, model_dir=args.model_dir, steps=args.steps, rank=args.rank, threads=args.threads
    )
    print(f"trained {lora} in {minutes:.1f} min")
    without = evaluate_model(model_dir=args.model_dir, new_shape=True, count=args.count)
    with_lora = evaluate_model(model_dir=args.model_dir, new_shape=True, count=args.count, loras=[str(lora)])
    n = with_lora.total
    print(f"stars found without the LoRA: {without.shape}/{n} = {100 * without.shape / n:.0f}%")
    print(f"stars found with the LoRA:    {with_lora.shape}/{n} = {100 * with_lora.shape / n:.0f}%")
    print(f"with the LoRA, everything right: {with_lora.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
