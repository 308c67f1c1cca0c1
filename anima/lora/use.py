"""The pipeline's LoRA hook: recipe LoRAs (and prompt tags) -> files -> applied for one run.

    recipe = split_prompt_loras(recipe)             # "<lora:x:0.8>" tags -> recipe.loras
    with applied_loras(pipe, recipe.loras):         # resolve, load, apply; removed on exit
        ... encode prompts, sample ...

Names are resolved by the pipeline's `RunOptions.lora_resolver` (name -> path; the CLI gives one
that searches the models folder's loras/ and ComfyUI installs, the server one that looks only
inside its LoRA folders); without one a name must be a path. `RunOptions.merge_loras` picks merge
mode over runtime wrapping. Applying per run
costs a memory-mapped read and a module swap in runtime mode (merge mode recomputes the merged
weights each run), and leaves the pipeline exactly as it was afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from anima.errors import AnimaError
from anima.lora.apply import apply_loras, pipeline_models
from anima.lora.comfy_keys import comfyui_loras
from anima.lora.file import check_lora, load_lora
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


def resolve_all(specs: Sequence[LoRASpec], resolve: Resolver) -> dict[str, Path]:
    """{name: checked path} for every LoRA asked for; AnimaError for a missing or foreign file."""
    return {name: check_lora(resolve(name)) for name, _ in specs}


@contextmanager
def applied_loras(
    pipe,
    specs: Sequence[LoRASpec],
    *,
    resolve: Resolver | None = None,
    merge: bool = False,
    key_rule: str = "all",
    clip: Sequence[LoRASpec] = (),
) -> Iterator[object]:
    """Apply `specs` [(name, strength)] to the pipeline's DiT, adapter and text encoder for the
    duration of the block; yields the `AppliedLoRAs` handle (None when there are no LoRAs).
    `resolve`: name -> path (default: names are paths); `merge`: merge instead of wrapping layers;
    `key_rule` "comfyui": only the keys ComfyUI's loaders apply (`anima.lora.comfy_keys`), `specs`
    as model halves and `clip` as text-encoder halves; the handle's `notes` say what was skipped."""
    if not specs and not clip:
        yield None
        return
    resolve = resolve or path_resolver
    notes: list[str] = []
    if key_rule == "comfyui":
        loras, notes = comfyui_loras(specs, clip, resolve)
    else:
        loras = [(load_lora(resolve(name), name=name), float(strength)) for name, strength in specs]
    handle = apply_loras(pipeline_models(pipe), loras, merge=merge)
    handle.notes.extend(notes)
    try:
        yield handle
    finally:
        handle.remove()
