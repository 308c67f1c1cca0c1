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
    g.add_argument("--model", help="a model name from `anima models` ('demo': the bundled demo model)")
    g.add_argument("--models-dir", type=Path, help="models folder (default: $ANIMA_MODELS_DIR)")
    g.add_argument("--comfyui", type=Path, action="append", default=[], help="a ComfyUI install to search")


def build_parser() -> argparse.ArgumentParser:
    from anima.cli.generate import add_generate_args

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
        "variant",
        nargs="?",
        default="base-v1.0",
        help="base-v1.0, turbo-v1.1, ..., or an add-on: turbo-lora-v0.2, rl-v0.1, lllite (--list shows all)",
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
    dl.add_argument("--list", action="store_true", help="list what can be downloaded (models, LoRAs, LLLite)")
    dl.add_argument("--models-dir", type=Path, help=argparse.SUPPRESS)
    cv = msub.add_parser("convert", help="write a bf16 DiT or text encoder as GGUF or as an 8-bit file")
    cv.add_argument("input", type=Path, help="a bf16 (or fp32) .safetensors DiT or text encoder")
    cv.add_argument("output", type=Path, help="the .gguf or .safetensors file to write")
    cv.add_argument(
        "--to",
        required=True,
        help="gguf-q8_0, gguf-q5_0, gguf-q5_1, gguf-q4_0, gguf-q4_1, gguf-f16, "
        "gguf-bf16 (GGUF, ComfyUI-GGUF layout) or int8, fp8 (ComfyUI comfy_quant 8-bit file)",
    )
    cv.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    mr = msub.add_parser("make-random", help="write random-weight files in the official layout")
    mr.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    mr.add_argument("--seed", type=int, default=0)
    mr.add_argument("out", type=Path, help="output folder")
    _add_prompt_tool_parsers(sub)  # prompt, explore, batch
    from anima.cli.serve import add_serve_args

    srv = sub.add_parser("serve", help="HTTP server: A1111-compatible API, job queue, web UI")
    add_serve_args(srv)
    _add_model_args(srv)
    from anima.cli.upscale import add_upscale_args

    add_upscale_args(sub.add_parser("upscale", help="upscale an image with an upscaler model (ESRGAN, ...)"))
    from anima.cli.lora import add_lora_args

    add_lora_args(sub.add_parser("lora", help="inspect and convert LoRA files"))
    from anima.cli.control_flags import add_preprocess_args

    add_preprocess_args(sub.add_parser("preprocess", help="make a control image (edges, line art, ...)"))
    from anima.cli.train import add_train_args

    add_train_args(sub.add_parser("train", help="train a LoRA / LoKr or fine-tune (TOML config + flags)"))
    return parser


def _add_prompt_tool_parsers(sub) -> None:
    from anima.cli.batch import add_batch_args
    from anima.cli.explore import add_explore_args
    from anima.cli.prompt import add_prompt_args

    add_prompt_args(sub.add_parser("prompt", help="lint or format a prompt, look up artist names"))
    for name, add, text in (
        ("explore", add_explore_args, "render an artist style gallery"),
        ("batch", add_batch_args, "generate many recipes with one loaded model"),
    ):
        p = sub.add_parser(name, help=text)
        add(p)
        _add_model_args(p)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s"
    )
    try:
        if args.command == "generate":
            from anima.cli.generate import run_generate

            return run_generate(args)
        if args.command == "models":
            return _run_models(args)
        if args.command == "serve":
            from anima.cli.serve import run_serve

            return run_serve(args)
        if args.command == "upscale":
            from anima.cli.upscale import run_upscale

            return run_upscale(args)
        if args.command == "lora":
            from anima.cli.lora import run_lora

            return run_lora(args)
        if args.command == "preprocess":
            from anima.cli.control_flags import run_preprocess

            return run_preprocess(args)
        if args.command == "train":
            from anima.cli.train import run_train

            return run_train(args)
        if args.command in ("prompt", "explore", "batch"):
            from importlib import import_module

            module = import_module(f"anima.cli.{args.command}")
            return getattr(module, f"run_{args.command}")(args)
    except AnimaError as e:
        print(f"anima: error: {cli_message(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("anima: interrupted", file=sys.stderr)
        return 130
    parser.print_help()
    return EXIT_USER_ERROR


# settings whose flag is not simply "--" + the name with dashes
_FLAGS = {
    "inpaint_area": "--only-masked", "guidance_kind": "--guidance", "regions": "--region",
    "reference_image": "--reference", "reference": "--reference", "control_image": "--control",
}  # fmt: skip


def cli_message(error: AnimaError) -> str:
    """The library's one line, with the flag of the setting it is about when it does not say it."""
    text = str(error)
    setting = getattr(error, "setting", None)
    if not setting:
        return text
    flag = _FLAGS.get(setting, "--" + setting.replace("_", "-"))
    return text if flag in text else f"{text} ({flag})"


def _run_models(args: argparse.Namespace) -> int:
    cmd = args.models_command or "list"
    if cmd == "make-random":
        from anima.weights.random import make_random

        files = make_random(args.preset, args.out, seed=args.seed)
        print(f"wrote random-weight {args.preset} model (NOT a trained model):")
        for part in ("dit", "text_encoder", "vae"):
            print(f"  --{part.replace('_', '-')} {getattr(files, part)}")
        return 0
    if cmd == "convert":
        from anima.weights.convert import convert

        if args.output.exists() and not args.overwrite:
            raise AnimaError(f"{args.output} exists; pass --overwrite to replace it")
        convert(args.input, args.output, args.to)
        return 0
    if cmd == "download":
        from anima.weights.discovery import default_data_dir
        from anima.weights.download import EXTRAS, catalog, download, download_extra, download_tokenizers

        if args.list:
            print("\n".join(catalog()))
            return 0
        dest = args.dest or models_dir_from(args) or default_data_dir(os.environ, Path.home()) / "models"
        if args.variant.strip().lower() in EXTRAS:
            accept = args.yes or _ask_licence()
            paths = download_extra(args.variant, dest, accept_license=accept, report=print)
            print("downloaded " + ", ".join(str(p) for p in paths))
            return 0
        if args.tokenizers_only:
            q, t = download_tokenizers(dest)
            print(f"tokenizers in {q.parent}")
            return 0
        accept = args.yes or _ask_licence()
        download(args.variant, dest, accept_license=accept, report=print)
        print(f"downloaded {args.variant} into {dest}")
        return 0
    from anima.cli.model_selection import list_models

    for line in list_models(args):
        print(line)
    return 0


def models_dir_from(args: argparse.Namespace) -> Path | None:
    d = getattr(args, "models_dir", None) or os.environ.get("ANIMA_MODELS_DIR")
    return Path(d) if d else None


def _ask_licence() -> bool:
    from anima.weights.download import LICENSE_TEXT

    print(LICENSE_TEXT)
    if not sys.stdin.isatty():
        raise AnimaError("the model licence must be accepted: re-run with --yes to accept it")
    return input("Accept the licence? [y/N] ").strip().lower() in ("y", "yes")


if __name__ == "__main__":
    sys.exit(main())
