"""Which LoRA keys ComfyUI's loaders apply to an Anima model, for graphs re-made by anima.

ComfyUI maps LoRA keys to model weights by name (``comfy.lora.model_lora_keys_unet`` /
``model_lora_keys_clip`` at the fixtures' commit). For Anima it knows, for every DiT weight
``diffusion_model.<k>.weight`` (adapter included), the kohya name ``lora_unet_<k with . -> _>`` and
the generic ``diffusion_model.<k>``; for the Qwen3 text encoder ``lora_te_<k with . -> _>`` and
``text_encoders.qwen3_06b.transformer.model.<k>``. Everything else (bare PEFT names,
``transformer.`` diffusers names, ``net.``) is "lora key not loaded" there, so a graph re-made here
skips the same keys and says so, while anima's own LoRA loading keeps reading every format.
``LoraLoaderModelOnly`` applies only the model half; ``LoraLoader`` the model half at
``strength_model`` and the text-encoder half at ``strength_clip``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from anima.lora.file import LoRAFile, check_lora, lora_from_tensors
from anima.lora.keys import split_suffix
from anima.weights.safetensors import load_mmap, read_header

PREFIXES = {
    "model": ("lora_unet_", "diffusion_model."),
    "clip": ("lora_te_", "text_encoders.qwen3_06b.transformer.model."),
}
SHOW = 3


def comfyui_loads(key: str, half: str) -> bool:
    """Whether ComfyUI's loader applies `key` to the model (`half` "model") or text encoder ("clip")."""
    module, _ = split_suffix(key)
    return module.startswith(PREFIXES[half])


def comfyui_applies_all(path: str | Path) -> bool:
    """Whether ComfyUI's LoraLoaderModelOnly applies every key of this file (header only): then a
    graph of that node makes the same image as anima's own every-format loading."""
    return all(comfyui_loads(k, "model") for k in read_header(Path(path)).keys())


def load_half(path: str | Path, name: str, half: str) -> tuple[LoRAFile | None, list[str]]:
    """(the keys of `half` that ComfyUI applies as a LoRA, or None when there are none; a note per
    file that lost keys). Keys of the other half are not "lost": the other loader applies them."""
    path = check_lora(path)  # a LoRA with some Anima key, else the one-line error
    header = read_header(path)
    tensors = load_mmap(path, header)
    other = "clip" if half == "model" else "model"
    keep = {k: t for k, t in tensors.items() if comfyui_loads(k, half)}
    lost = [k for k in tensors if k not in keep and not comfyui_loads(k, other)]
    notes = []
    if lost:
        notes.append(
            f"LoRA {name}: {len(lost)} keys are not loaded, as ComfyUI's loader does not map them for "
            f"Anima (e.g. {', '.join(lost[:SHOW])})"
        )
    if not keep:
        return None, notes
    return lora_from_tensors(keep, header.metadata, name), notes


def comfyui_loras(
    model: Sequence[tuple[str, float]], clip: Sequence[tuple[str, float]], resolve: Callable[[str], Path]
) -> tuple[list[tuple[LoRAFile, float]], list[str]]:
    """The LoRA halves of a graph's loaders, in order (model halves, then text-encoder halves), and
    the notes on skipped keys (each file's once)."""
    loras: list[tuple[LoRAFile, float]] = []
    notes: list[str] = []
    for half, specs in (("model", model), ("clip", clip)):
        for name, strength in specs:
            lora, said = load_half(resolve(name), name, half)
            notes += [n for n in said if n not in notes]
            if lora is not None:
                loras.append((lora, float(strength)))
    return loras, notes
