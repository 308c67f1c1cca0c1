"""CLI flags + environment -> which model files to load (the library itself reads no env vars)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from anima import demo
from anima.errors import AnimaError
from anima.weights.discovery import (
    ModelSet,
    choose,
    default_comfyui_dirs,
    default_data_dir,
    default_hf_cache,
    discover,
    find_tokenizers,
    resolve_lora,
    scan,
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
    # `anima models` with no subcommand has no model flags at all.
    return {k: getattr(args, k, None) for k in ("dit", "text_encoder", "vae")}


DEMO_SOURCE = demo.SOURCE
DEMO_NAMES = ("demo", "anima-demo", "anima-demo-dit")  # --model names that pick the bundled DEMO model
_MODEL_FLAGS = ("dit", "text_encoder", "vae", "diffusers", "model")


def demo_model_set() -> ModelSet:
    """The bundled DEMO model (anima/demo/model) as a model set; AnimaError if it is incomplete."""
    from anima.demo import default_model

    m = default_model()
    # Named like every file-based set, after its DiT file: that is the name its images record.
    return ModelSet(m.dit.stem, m.dit, m.text_encoder, m.vae, m.qwen_tokenizer, m.t5_tokenizer, DEMO_SOURCE)


def model_notice(files: ModelSet) -> str | None:
    """A line to tell the user about the chosen set: the demo says that it is one."""
    if files.source != DEMO_SOURCE:
        return None
    from anima.demo import NOTICE

    return f"anima: {NOTICE}"


def model_recipe_defaults(files: ModelSet) -> dict[str, object]:
    """Recipe settings a model needs unless the user says otherwise (the demo only knows 64x64)."""
    if files.source != DEMO_SOURCE:
        return {}
    from anima.demo import RECIPE_DEFAULTS

    return dict(RECIPE_DEFAULTS)


def resolve_files(args: argparse.Namespace, *, demo_fallback: bool = False) -> ModelSet:
    """The model set to load, with tokenizers; every path checked (headers only) before loading.

    ``--model demo`` picks the bundled DEMO model. With `demo_fallback`, a command that names no
    model and finds none gets it too (source ``"demo"``) instead of an error, so a fresh install
    can generate something.
    """
    if getattr(args, "model", None) in DEMO_NAMES:
        return demo_model_set()
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
    if not sets and demo_fallback and not any(getattr(args, k, None) for k in _MODEL_FLAGS):
        return demo_model_set()
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
    demo = _demo_line()
    if not sets:
        return [
            "no Anima model found.",
            "searched: " + ", ".join(str(p) for p in _searched(places)),
            "use --models-dir DIR, --comfyui DIR, or `anima models download --accept-license`",
            *([demo + " (used when no model is found)"] if demo else []),
        ]
    lines = []
    for s in sets:
        tok = "tokenizers: " + ("ok" if s.qwen_tokenizer and s.t5_tokenizer else "MISSING")
        if s.diffusers is not None:
            lines.append(f"{s.name}  [{s.source}]  diffusers folder {s.diffusers}  {tok}")
        else:
            lines.append(f"{s.name}  [{s.source}]  {tok}")
            lines += [
                f"    dit:          {s.dit}  [{_format(s.dit)}]",
                f"    text encoder: {s.text_encoder}  [{_format(s.text_encoder)}]",
                f"    vae:          {s.vae}  [{_format(s.vae)}]",
            ]
    return lines + ([demo] if demo else [])


def _format(path: Path) -> str:
    """The file's storage format and quant type (`anima.weights.file_format`), or why it is unknown."""
    from anima.weights.file_format import describe_format

    try:
        return describe_format(path)
    except AnimaError as e:
        return f"unreadable: {e}"


def _demo_line() -> str | None:
    try:
        m = demo_model_set()
    except AnimaError:
        return None
    return f"{m.name}  [{DEMO_SOURCE}]  bundled DEMO model (tiny, coloured shapes; not Anima): --model demo"


def _searched(places: dict) -> list[Path]:
    out = [p for p in (places["models_dir"],) if p]
    return out + list(places["comfyui_dirs"]) + [places["hf_cache"]]


# --------------------------------------------------------------------- LoRA names
def lora_resolver(args: argparse.Namespace) -> Callable[[str], Path]:
    """Resolve names as the CLI user expects: a path, else a file stem in the models folder's loras/
    or a ComfyUI install's models/loras (the places `anima models` searches)."""
    scans = []

    def resolve(name: str) -> Path:
        path = Path(name)
        if path.is_file():
            return path
        if not scans:  # search lazily: only when a name is not a path
            places = search_places(args)
            scans.extend(scan(places["models_dir"], places["comfyui_dirs"], None))
        return resolve_lora(name, scans)

    return resolve


def check_job_loras(args: argparse.Namespace, recipes: Sequence) -> Callable[[str], Path]:
    """CLI, before loading models: find and header-check every LoRA the recipes ask for (flags and
    prompt tags); returns the resolver the pipeline then uses (the checked paths, no second search)."""
    from anima.lora.use import resolve_all, split_prompt_loras

    resolve = lora_resolver(args)
    specs = [spec for r in recipes for spec in split_prompt_loras(r).loras]
    found = resolve_all(specs, resolve)
    return lambda name: found[name] if name in found else resolve(name)
