"""`anima` command line: one entry point, subcommands, one-line errors.

The CLI is the only place that prints. User mistakes (AnimaError) become one line on stderr and
exit status 2; nothing is written before every input has been checked.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from anima.errors import AnimaError

EXIT_USER_ERROR = 2


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model files")
    g.add_argument("--dit", type=Path, help="DiT file (e.g. anima-base-v1.0.safetensors)")
    g.add_argument("--text-encoder", type=Path, help="Qwen3 text encoder (qwen_3_06b_base.safetensors)")
    g.add_argument("--vae", type=Path, help="Qwen-Image VAE (qwen_image_vae.safetensors)")
    g.add_argument("--tokenizer-dir", type=Path, help="folder with qwen/ and t5/ tokenizer folders")
    g.add_argument("--diffusers", type=Path, help="a diffusers-format Anima folder")
    g.add_argument("--model", help="a model name from `anima models`")
    g.add_argument("--models-dir", type=Path, help="models folder (default: $ANIMA_MODELS_DIR)")
    g.add_argument("--comfyui", type=Path, action="append", default=[], help="a ComfyUI install to search")


def build_parser() -> argparse.ArgumentParser:
    from anima.generate_cli import add_generate_args

    parser = argparse.ArgumentParser(prog="anima", description="Anima text-to-image engine")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images from a prompt")
    add_generate_args(gen)
    _add_model_args(gen)

    models = sub.add_parser("models", help="list, download or make model files")
    msub = models.add_subparsers(dest="models_command")
    ls = msub.add_parser("list", help="list the models anima finds (the default)")
    _add_model_args(ls)
    dl = msub.add_parser("download", help="download the official files with huggingface_hub")
    dl.add_argument(
        "variant", nargs="?", default="base-v1.0", help="preview, preview2, preview3, base-v1.0, ..."
    )
    dl.add_argument("--dest", type=Path, help="target models folder (default: the anima data folder)")
    dl.add_argument(
        "--accept-license",
        "--yes",
        dest="yes",
        action="store_true",
        help="accept the model licence without asking",
    )
    dl.add_argument("--tokenizers-only", action="store_true", help="fetch only the two tokenizers")
    dl.add_argument("--models-dir", type=Path, help=argparse.SUPPRESS)
    mr = msub.add_parser("make-random", help="write random-weight files in the official layout")
    mr.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    mr.add_argument("--seed", type=int, default=0)
    mr.add_argument("out", type=Path, help="output folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s"
    )
    try:
        if args.command == "generate":
            from anima.generate_cli import run_generate

            return run_generate(args)
        if args.command == "models":
            return _run_models(args)
    except AnimaError as e:
        print(f"anima: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("anima: interrupted", file=sys.stderr)
        return 130
    parser.print_help()
    return EXIT_USER_ERROR


def _run_models(args: argparse.Namespace) -> int:
    cmd = args.models_command or "list"
    if cmd == "make-random":
        from anima.random_weights import make_random

        files = make_random(args.preset, args.out, seed=args.seed)
        print(f"wrote random-weight {args.preset} model (NOT a trained model):")
        for part in ("dit", "text_encoder", "vae"):
            print(f"  --{part.replace('_', '-')} {getattr(files, part)}")
        return 0
    if cmd == "download":
        from anima.download import download, download_tokenizers
        from anima.models_dir import default_data_dir

        dest = args.dest or models_dir_from(args) or default_data_dir(os.environ, Path.home()) / "models"
        if args.tokenizers_only:
            q, t = download_tokenizers(dest)
            print(f"tokenizers in {q.parent}")
            return 0
        accept = args.yes or _ask_licence()
        download(args.variant, dest, accept_license=accept, report=print)
        print(f"downloaded {args.variant} into {dest}")
        return 0
    from anima.model_selection import list_models

    for line in list_models(args):
        print(line)
    return 0


def models_dir_from(args: argparse.Namespace) -> Path | None:
    d = getattr(args, "models_dir", None) or os.environ.get("ANIMA_MODELS_DIR")
    return Path(d) if d else None


def _ask_licence() -> bool:
    from anima.download import LICENSE_TEXT

    print(LICENSE_TEXT)
    if not sys.stdin.isatty():
        raise AnimaError("the model licence must be accepted: re-run with --yes to accept it")
    return input("Accept the licence? [y/N] ").strip().lower() in ("y", "yes")


if __name__ == "__main__":
    sys.exit(main())
