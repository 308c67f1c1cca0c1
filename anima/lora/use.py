"""The pipeline's LoRA hook: recipe LoRAs (and prompt tags) -> files -> applied for one run.

    recipe = split_prompt_loras(recipe)             # "<lora:x:0.8>" tags -> recipe.loras
    with applied_loras(pipe, recipe.loras):         # resolve, load, apply; removed on exit
        ... encode prompts, sample ...

Names are resolved by ``pipe.lora_resolver`` (name -> path; the CLI installs one that searches the
models folder's loras/ and ComfyUI installs via `anima.models_dir.resolve_lora`); without one a name
must be a path. ``pipe.merge_loras`` picks merge mode over runtime wrapping. Applying per run
costs a memory-mapped read and a module swap in runtime mode (merge mode recomputes the merged
weights each run), and leaves the pipeline exactly as it was afterwards.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from anima.errors import AnimaError
from anima.lora.prompt import LoRASpec, extract_prompt_loras

Resolver = Callable[[str], Path]


def split_prompt_loras(recipe):
    """Move ``<lora:name:w>`` tags from the prompt into ``recipe.loras`` (after any already there)."""
    prompt, specs = extract_prompt_loras(recipe.prompt)
    if not specs:
        return recipe
    return recipe.with_(prompt=prompt, loras=tuple(recipe.loras) + tuple(specs))


def path_resolver(name: str) -> Path:
    """Names as paths (``x`` may omit ``.safetensors``)."""
    for candidate in (Path(name), Path(f"{name}.safetensors")):
        if candidate.is_file():
            return candidate
    raise AnimaError(f"LoRA {name!r} not found (give a path, or put it in the models folder's loras/)")


def resolver_from_args(args: argparse.Namespace) -> Resolver:
    """Resolve names as the CLI user expects: a path, else a file stem in the models folder's loras/
    or a ComfyUI install's models/loras (the places `anima models` searches)."""
    from anima.model_selection import search_places
    from anima.models_dir import resolve_lora, scan

    places = search_places(args)
    scans = []

    def resolve(name: str) -> Path:
        path = Path(name)
        if path.is_file():
            return path
        if not scans:  # scan lazily: only when a name is not a path
            scans.extend(scan(places["models_dir"], places["comfyui_dirs"], None))
        return resolve_lora(name, scans)

    return resolve


def resolve_all(specs: Sequence[LoRASpec], resolve: Resolver) -> dict[str, Path]:
    """{name: checked path} for every LoRA asked for; AnimaError for a missing or foreign file."""
    from anima.lora.file import check_lora

    return {name: check_lora(resolve(name)) for name, _ in specs}


def check_job_loras(args: argparse.Namespace, recipes: Sequence) -> Resolver:
    """CLI, before loading models: find and header-check every LoRA the recipes ask for (flags and
    prompt tags); returns the resolver the pipeline then uses (the checked paths, no second search)."""
    resolve = resolver_from_args(args)
    specs = [spec for r in recipes for spec in split_prompt_loras(r).loras]
    found = resolve_all(specs, resolve)
    return lambda name: found[name] if name in found else resolve(name)


@contextmanager
def applied_loras(pipe, specs: Sequence[LoRASpec], *, merge: bool | None = None) -> Iterator[object]:
    """Apply `specs` [(name, strength)] to the pipeline's DiT, adapter and text encoder for the
    duration of the block; yields the `AppliedLoRAs` handle (None when there are no LoRAs)."""
    if not specs:
        yield None
        return
    from anima.lora.apply import apply_loras, pipeline_models
    from anima.lora.file import load_lora

    resolve = getattr(pipe, "lora_resolver", None) or path_resolver
    merge = bool(getattr(pipe, "merge_loras", False)) if merge is None else merge
    loras = [(load_lora(resolve(name), name=name), float(strength)) for name, strength in specs]
    handle = apply_loras(pipeline_models(pipe), loras, merge=merge)
    try:
        yield handle
    finally:
        handle.remove()
