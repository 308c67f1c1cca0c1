"""CLI flags + environment -> which model files to load (the library itself reads no env vars)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from anima.errors import AnimaError
from anima.models_dir import (
    ModelSet,
    choose,
    default_comfyui_dirs,
    default_data_dir,
    default_hf_cache,
    discover,
    find_tokenizers,
)


def search_places(args: argparse.Namespace) -> dict:
    env, home = os.environ, Path.home()
    data_dir = default_data_dir(env, home)
    models_dir = getattr(args, "models_dir", None) or (
        Path(env["ANIMA_MODELS_DIR"]) if env.get("ANIMA_MODELS_DIR") else None
    )
    if models_dir is None and (data_dir / "models").is_dir():
        models_dir = data_dir / "models"  # where `anima models download` puts files by default
    if models_dir is not None and not Path(models_dir).is_dir():
        raise AnimaError(f"--models-dir {models_dir}: no such folder")
    comfy = list(getattr(args, "comfyui", []) or []) + default_comfyui_dirs(home)
    for c in getattr(args, "comfyui", []) or []:
        if not Path(c).is_dir():
            raise AnimaError(f"--comfyui {c}: no such folder")
    return {
        "models_dir": models_dir,
        "comfyui_dirs": comfy,
        "hf_cache": default_hf_cache(env, home),
        "data_dir": data_dir,
    }


def _explicit(args: argparse.Namespace) -> dict:
    return {"dit": args.dit, "text_encoder": args.text_encoder, "vae": args.vae}


def resolve_files(args: argparse.Namespace) -> ModelSet:
    """The model set to load, with tokenizers; every path checked (headers only) before loading."""
    places = search_places(args)
    tok_dir = getattr(args, "tokenizer_dir", None)
    if tok_dir is not None and not Path(tok_dir).is_dir():
        raise AnimaError(f"--tokenizer-dir {tok_dir}: no such folder")
    if getattr(args, "diffusers", None) is not None:
        d = Path(args.diffusers)
        if not d.is_dir():
            raise AnimaError(f"--diffusers {d}: no such folder")
        q, t = find_tokenizers(tokenizer_dir=tok_dir, diffusers_dirs=[d])
        return ModelSet(d.name, d / "transformer", d / "text_encoder", d / "vae", q, t, "explicit", d)
    for flag in ("dit", "text_encoder", "vae"):
        p = getattr(args, flag)
        if p is not None and not Path(p).exists():
            raise AnimaError(f"--{flag.replace('_', '-')} {p}: file not found")
    sets = discover(
        _explicit(args),
        places["models_dir"],
        places["comfyui_dirs"],
        places["hf_cache"],
        tokenizer_dir=tok_dir,
        data_dir=places["data_dir"],
    )
    chosen = choose(sets, getattr(args, "model", None))
    if chosen.diffusers is None and (chosen.qwen_tokenizer is None or chosen.t5_tokenizer is None):
        raise AnimaError(
            "found the model files but no tokenizers: pass --tokenizer-dir (a folder with qwen/ and t5/), "
            "point --comfyui at a ComfyUI install, or run `anima models download --tokenizers-only`"
        )
    return chosen


def list_models(args: argparse.Namespace) -> list[str]:
    places = search_places(args)
    sets = discover(
        _explicit(args),
        places["models_dir"],
        places["comfyui_dirs"],
        places["hf_cache"],
        tokenizer_dir=getattr(args, "tokenizer_dir", None),
        data_dir=places["data_dir"],
    )
    if not sets:
        return [
            "no Anima model found.",
            "searched: " + ", ".join(str(p) for p in _searched(places)),
            "use --models-dir DIR, --comfyui DIR, or `anima models download --accept-license`",
        ]
    lines = []
    for s in sets:
        tok = "tokenizers: " + ("ok" if s.qwen_tokenizer and s.t5_tokenizer else "MISSING")
        if s.diffusers is not None:
            lines.append(f"{s.name}  [{s.source}]  diffusers folder {s.diffusers}  {tok}")
        else:
            lines.append(f"{s.name}  [{s.source}]  {tok}")
            lines += [
                f"    dit:          {s.dit}",
                f"    text encoder: {s.text_encoder}",
                f"    vae:          {s.vae}",
            ]
    return lines


def _searched(places: dict) -> list[Path]:
    out = [p for p in (places["models_dir"],) if p]
    return out + list(places["comfyui_dirs"]) + [places["hf_cache"]]
