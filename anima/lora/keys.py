"""LoRA file key names: recognise the format, parse keys into (target, tensor), write any format.

A key is ``<module name>.<tensor suffix>``. Module names (anima-spec §8):

- sd-scripts: ``lora_unet_<path with . -> _>`` (DiT), ``lora_unet_llm_adapter_<...>`` (adapter),
  ``lora_te_<...>`` (text encoder);
- comfy and diffusion-pipe: ``diffusion_model.<path>``, ``diffusion_model.llm_adapter.<path>``,
  ``text_encoders.qwen3_06b.transformer.model.<path>``;
- diffusers: ``transformer.<path renamed as in anima-spec §1.6>``, ``text_conditioner.<path>``,
  ``text_encoder.<path>``.

Also read: ``model.diffusion_model.``, ``net.`` and bare DiT names, ``qwen3_06b.transformer.model.``
and ``text_encoder.qwen3.`` (older sd-scripts converter) text-encoder names.

Tensor suffixes: ``lora_down.weight``/``lora_up.weight`` (sd-scripts) or ``lora_A.weight``/
``lora_B.weight`` (PEFT: comfy, diffusion-pipe, diffusers), ``alpha``, LyCORIS ``lokr_w1``,
``lokr_w1_a``, ``lokr_w1_b``, ``lokr_w2``, ``lokr_w2_a``, ``lokr_w2_b``, ``lokr_t2`` and ``hada_w1_a``,
``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b``, ``hada_t1``, ``hada_t2``. diffusion-pipe writes no alpha
(alpha = rank, scale 1); diffusers keeps alpha in PEFT metadata or folds it into lora_B.
The diffusers text-encoder names are ours (diffusers itself loads no Anima text-encoder LoRA).
"""

from __future__ import annotations

from dataclasses import dataclass

from anima.lora.targets import Part, Target, parse_path
from anima.weights.diffusers_keys import dit_to_diffusers

FORMATS = ("comfy", "sd-scripts", "diffusers", "diffusion-pipe")

# (prefix, part, naming style of the rest, format) - first match wins, so longer prefixes come first.
_PREFIXES: tuple[tuple[str, Part, str, str], ...] = (
    ("lora_unet_llm_adapter_", "adapter", "underscored", "sd-scripts"),
    ("lora_unet_", "dit", "underscored", "sd-scripts"),
    ("lora_te_", "te", "underscored", "sd-scripts"),
    ("diffusion_model.llm_adapter.", "adapter", "dotted", "comfy"),
    ("diffusion_model.", "dit", "dotted", "comfy"),
    ("model.diffusion_model.llm_adapter.", "adapter", "dotted", "comfy"),
    ("model.diffusion_model.", "dit", "dotted", "comfy"),
    ("net.llm_adapter.", "adapter", "dotted", "comfy"),
    ("net.", "dit", "dotted", "comfy"),
    ("text_encoders.qwen3_06b.transformer.model.", "te", "dotted", "comfy"),
    ("qwen3_06b.transformer.model.", "te", "dotted", "comfy"),
    ("text_encoder.qwen3.", "te", "dotted", "comfy"),
    ("transformer.", "dit", "diffusers", "diffusers"),
    ("text_conditioner.", "adapter", "dotted", "diffusers"),
    ("text_encoder.", "te", "dotted", "diffusers"),
    ("llm_adapter.", "adapter", "dotted", "comfy"),
    ("", "dit", "dotted", "comfy"),  # bare official names, as ComfyUI accepts them
)

# file suffix -> (adapter kind or "*" for any, canonical tensor name)
SUFFIXES: dict[str, tuple[str, str]] = {
    "lora_down.weight": ("lora", "down"),
    "lora_up.weight": ("lora", "up"),
    "lora_A.weight": ("lora", "down"),
    "lora_B.weight": ("lora", "up"),
    "lora.down.weight": ("lora", "down"),
    "lora.up.weight": ("lora", "up"),
    "alpha": ("*", "alpha"),
    **{f"lokr_{n}": ("lokr", n) for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")},
    **{f"hada_{n}": ("loha", n) for n in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")},
}
# Recognised but not supported: applying without them would give a different result than intended.
UNSUPPORTED_SUFFIXES = {
    "dora_scale": "DoRA (weight-decomposed LoRA)",
    "lora_mid.weight": "LoCon Tucker mid (convolution layers)",
    "lokr_t1": "LoKr Tucker t1",
    "diff": "full weight difference",
    "diff_b": "bias difference",
    "lora_B.bias": "LoRA bias",
    "lora_up.bias": "LoRA bias",
}
_BY_LENGTH = sorted([*SUFFIXES, *UNSUPPORTED_SUFFIXES], key=len, reverse=True)


@dataclass(frozen=True)
class ParsedKey:
    key: str
    module: str  # the module part of the key, as written in the file
    suffix: str  # the tensor suffix ("" if none recognised)
    target: Target | None  # None: names no Anima layer
    fmt: str | None  # naming convention of the module part (None if unrecognised)


def split_suffix(key: str) -> tuple[str, str]:
    for suffix in _BY_LENGTH:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    return key, ""


def parse_module(module: str) -> tuple[Target | None, str | None]:
    """A module name from a LoRA file -> (target or None, the format its prefix belongs to)."""
    for prefix, part, style, fmt in _PREFIXES:
        if module.startswith(prefix):
            target = parse_path(part, module[len(prefix) :], style)
            if target is not None or prefix:
                return target, fmt
    return None, None


def parse_key(key: str) -> ParsedKey:
    module, suffix = split_suffix(key)
    if not suffix:
        return ParsedKey(key, module, "", None, None)
    target, fmt = parse_module(module)
    return ParsedKey(key, module, suffix, target, fmt)


# ------------------------------------------------------------------ writing
_MODULE_PREFIX: dict[str, dict[Part, str]] = {
    "sd-scripts": {"dit": "lora_unet_", "adapter": "lora_unet_llm_adapter_", "te": "lora_te_"},
    "comfy": {
        "dit": "diffusion_model.",
        "adapter": "diffusion_model.llm_adapter.",
        "te": "text_encoders.qwen3_06b.transformer.model.",
    },
    "diffusers": {"dit": "transformer.", "adapter": "text_conditioner.", "te": "text_encoder."},
}
_MODULE_PREFIX["diffusion-pipe"] = _MODULE_PREFIX["comfy"]

# Formats whose readers take lora_A/lora_B with no alpha: the scale is folded into lora_B.
FOLDS_ALPHA = {"diffusion-pipe", "diffusers"}


def module_name(fmt: str, target: Target) -> str:
    prefix = _MODULE_PREFIX[fmt][target.part]
    if fmt == "sd-scripts":
        return prefix + target.path.replace(".", "_")
    if fmt == "diffusers" and target.part == "dit":
        return prefix + dit_to_diffusers(target.path)
    return prefix + target.path


def tensor_suffix(fmt: str, kind: str, name: str) -> str:
    """Canonical tensor name of an adapter kind -> the file suffix in `fmt`."""
    if name == "alpha":
        return "alpha"
    if kind == "lora":
        if fmt == "sd-scripts":
            return {"down": "lora_down.weight", "up": "lora_up.weight"}[name]
        return {"down": "lora_A.weight", "up": "lora_B.weight"}[name]
    return {"lokr": "lokr_", "loha": "hada_"}[kind] + name


def key_for(fmt: str, target: Target, kind: str, name: str) -> str:
    return f"{module_name(fmt, target)}.{tensor_suffix(fmt, kind, name)}"
