"""`anima lora convert IN OUT --to FORMAT` and `anima lora info FILE`."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

FORMATS = ("comfy", "sd-scripts", "diffusers", "diffusion-pipe")  # == anima.lora.keys.FORMATS


def add_lora_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="lora_command", required=True)
    conv = sub.add_parser("convert", help="rewrite a LoRA in another format")
    conv.add_argument("input", help="LoRA .safetensors in any supported format")
    conv.add_argument("output", help="output .safetensors")
    conv.add_argument("--to", required=True, choices=FORMATS, dest="fmt", help="target format")
    conv.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    info = sub.add_parser("info", help="format, rank, targets and metadata of a LoRA")
    info.add_argument("file", help="LoRA .safetensors")
    info.add_argument("--all-metadata", action="store_true", help="print every metadata entry")
    info.add_argument("--json", action="store_true", help="machine-readable output")


def run_lora(args: argparse.Namespace) -> int:
    from anima.lora.info import convert, lora_info

    if args.lora_command == "convert":
        lora = convert(args.input, args.output, args.fmt, overwrite=args.overwrite)
        print(f"{args.input} ({lora.fmt}, {len(lora.adapters)} layers) -> {args.output} ({args.fmt})")
        return 0
    info = lora_info(args.file)
    if args.json:
        d = asdict(info)
        d["path"] = str(info.path)
        print(json.dumps(d, indent=1))
    else:
        print("\n".join(info.lines(all_metadata=args.all_metadata)))
    return 0
