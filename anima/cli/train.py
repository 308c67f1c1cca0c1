"""`anima train CONFIG.toml [--field value ...]`: train a LoRA / LoKr or fine-tune, with a progress bar.

Every `TrainConfig` field is a flag that overrides the TOML file. Ctrl-C (or SIGTERM) saves a
resumable checkpoint before exiting; ``--resume`` (= ``--resume latest``) continues from the newest
checkpoint in the output folder. For data parallel training start it under torchrun, e.g.
``torchrun --nproc-per-node 2 -m anima.cli.train CONFIG.toml``.

``anima train --demo`` regenerates the bundled DEMO model from scratch (`anima.demo.build_cli`).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from anima.errors import AnimaError


def add_train_args(p: argparse.ArgumentParser) -> None:
    from anima.train.config import add_flags

    p.add_argument(
        "config", nargs="?", type=Path, help="TOML file (optional when every needed flag is given)"
    )
    p.add_argument(
        "--demo", action="store_true", help="rebuild the bundled demo model (python -m anima.demo.build_cli)"
    )
    p.add_argument(
        "--model",
        help="train on a model anima finds, as `anima generate --model` does ('demo': the bundled "
        "demo model); --dit/--text-encoder/--vae/--tokenizer-dir override its files",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_flags(p)


def _sigterm(signum, frame) -> None:  # pragma: no cover - exercised through a subprocess
    raise KeyboardInterrupt


def run_train(args: argparse.Namespace) -> int:
    if args.demo:
        from anima.demo.build_cli import main as build_main

        return build_main([])
    from anima.train.config import config_from_args
    from anima.train.trainer import Trainer

    cfg = config_from_args(args, args.config, base=_model_files(args.model) if args.model else None)
    bar = None

    def on_step(info) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(
                total=info.total, initial=info.step - 1, unit="step", dynamic_ncols=True, file=sys.stderr
            )
        bar.set_postfix(
            loss=f"{info.loss:.4f}", lr=f"{info.lr:.2e}", epoch=f"{info.epoch:.2f}", refresh=False
        )
        bar.update(1)

    def on_message(text: str) -> None:
        print(text, file=sys.stderr)

    signal.signal(signal.SIGTERM, _sigterm)
    try:
        result = Trainer(cfg, on_step=on_step, on_message=on_message).run()
    finally:
        if bar is not None:
            bar.close()
    print(f"saved {result}")
    return 0


def _model_files(name: str) -> dict[str, str]:
    """The training config's file fields for model `name` (found as `anima generate` finds it)."""
    from anima.cli import model_selection

    lookup = argparse.Namespace(model=name, dit=None, text_encoder=None, vae=None, tokenizer_dir=None)
    files = model_selection.resolve_files(lookup)
    if files.diffusers is not None:
        raise AnimaError(f"model {name!r} is a diffusers folder; training takes the single-file layout")
    if files.qwen_tokenizer is None or files.qwen_tokenizer.parent != files.t5_tokenizer.parent:
        raise AnimaError(f"model {name!r}: its tokenizers are not in one folder; pass --tokenizer-dir")
    notice = model_selection.model_notice(files)
    if notice:
        print(notice, file=sys.stderr)
    return {
        "dit": str(files.dit), "text_encoder": str(files.text_encoder), "vae": str(files.vae),
        "tokenizer_dir": str(files.qwen_tokenizer.parent),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m anima.cli.train`` (what torchrun starts)."""
    parser = argparse.ArgumentParser(prog="anima train", description="train a LoRA, LoKr or a full fine-tune")
    add_train_args(parser)
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except AnimaError as e:
        print(f"anima: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anima: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
