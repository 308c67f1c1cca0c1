"""Reading and writing LoRA files in every supported format.

`load_lora(path)` memory-maps the file, recognises its format from the key names, and groups the
tensors by layer into `Adapter` modules (`anima.lora.modules`). Keys that name no Anima layer are
kept in `LoRAFile.unmatched` and reported once as a warning (count and the first few); a file with
no Anima key at all is refused, naming the architecture it was made for when the keys show it.

`state_dict_for(adapters, fmt)` writes them back in any format. Renaming formats into each other
copies tensors bit for bit; only the formats without alpha (diffusers, diffusion-pipe) fold the
LoRA scale into lora_B, in fp32 whenever the file dtype cannot hold the product exactly.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from anima.errors import AnimaError
from anima.lora import keys as K
from anima.lora.modules import Adapter, LoRA, from_tensors
from anima.lora.targets import Target
from anima.weights import file_kinds
from anima.weights.safetensors import load_mmap, read_header, save

log = logging.getLogger(__name__)

SHOW = 5  # how many unmatched keys a warning lists


@dataclass
class LoRAFile:
    """A parsed LoRA: one adapter per target layer, plus what could not be used."""

    name: str
    fmt: str  # "comfy", "sd-scripts", "diffusers", "diffusion-pipe" or "mixed"
    adapters: dict[Target, Adapter]
    unmatched: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    dtype: torch.dtype | None = None

    @property
    def kinds(self) -> list[str]:
        return sorted({a.kind for a in self.adapters.values()})


# Key fragments of other model families, to say what a foreign file is for.
_FOREIGN = (
    (r"lora_unet_(down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)_|lora_te[12]_|"
     r"(down_blocks|up_blocks)\.\d+\.(attentions|resnets)", "Stable Diffusion 1.x/2.x/SDXL"),
    (r"double_blocks|single_blocks|single_transformer_blocks", "Flux"),
    (r"joint_blocks|context_block", "SD3"),
    (r"img_mlp|img_mod|txt_mlp", "Qwen-Image / MMDiT"),
    (r"blocks[._]\d+[._](self_attn|cross_attn)[._][qkvo](\.|$)|[._]ffn[._]\d", "Wan video"),
    (r"layers[._]\d+[._]attention[._](to_q|qkv)|adaLN_modulation", "Lumina / Z-Image"),
)  # fmt: skip


def foreign_architecture(keys: list[str]) -> str | None:
    for pattern, name in _FOREIGN:
        rx = re.compile(pattern)
        if any(rx.search(k) for k in keys):
            return name
    return None


def _peft_alphas(metadata: Mapping[str, str]) -> dict[str, dict]:
    """diffusers' `lora_adapter_metadata` (PEFT LoraConfig per component) -> {component: config}."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError:
        log.warning("ignoring unreadable lora_adapter_metadata")
        return {}
    out: dict[str, dict] = defaultdict(dict)
    for k, v in flat.items():
        comp, _, field_name = k.rpartition(".")
        out[comp][field_name] = v
    return dict(out)


def _peft_alpha(configs: dict[str, dict], module: str, rank: int) -> float | None:
    """The alpha PEFT would use for `module` (a diffusers-named module), as an alpha for scale alpha/rank."""
    comp, _, rest = module.partition(".")
    cfg = configs.get(comp) or configs.get("")
    if not cfg or cfg.get("lora_alpha") is None:
        return None
    alpha = float(cfg["lora_alpha"])
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?{pattern}", rest):
            alpha = float(value)
    if cfg.get("use_rslora"):
        alpha *= rank / rank**0.5  # scale alpha/sqrt(r) written as alpha'/r
    return alpha


@dataclass
class KeyScan:
    """Keys of a LoRA file sorted by what they name (no tensor data needed)."""

    groups: dict[str, dict[str, str]]  # module -> {suffix: key}
    targets: dict[str, Target]  # module -> target
    formats: Counter[str]
    unmatched: list[str]
    unsupported: dict[str, list[str]]  # what -> keys


def scan_keys(keys: list[str], name: str = "LoRA") -> KeyScan:
    """Sort keys by layer; AnimaError for a DoRA file or one with no Anima key (naming the
    architecture it was made for when the keys show it)."""
    scan = KeyScan(defaultdict(dict), {}, Counter(), [], defaultdict(list))
    for key in keys:
        pk = K.parse_key(key)
        if pk.suffix in K.UNSUPPORTED_SUFFIXES:
            scan.unsupported[K.UNSUPPORTED_SUFFIXES[pk.suffix]].append(key)
        elif pk.target is None:
            scan.unmatched.append(key)
        else:
            scan.groups[pk.module][pk.suffix] = key
            scan.targets[pk.module] = pk.target
            scan.formats[pk.fmt] += 1
    if "DoRA (weight-decomposed LoRA)" in scan.unsupported:
        raise AnimaError(f"{name}: DoRA LoRAs (dora_scale keys) are not supported")
    if not scan.groups:
        foreign = foreign_architecture(keys)
        if foreign:
            raise AnimaError(f"{name} is a LoRA for {foreign}, not for Anima")
        example = keys[0] if keys else "(no tensors)"
        raise AnimaError(f"{name}: no key names an Anima layer (e.g. {example}); not an Anima LoRA")
    return scan


def check_lora(path: str | Path) -> Path:
    """Header-only check that `path` is a LoRA for Anima (AnimaError otherwise); for CLIs, before
    any model is loaded."""

    path = Path(path)
    header = read_header(path)
    kind = file_kinds.detect(header.keys())
    if kind.kind not in (file_kinds.LORA, file_kinds.UNKNOWN):
        raise AnimaError(f"{path} is {kind.description}, not a LoRA")
    scan_keys(header.keys(), path.name)
    return path


def lora_from_tensors(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None, name: str = "LoRA"
) -> LoRAFile:
    """Group a LoRA state dict by layer into adapters; AnimaError when no key fits an Anima model."""
    metadata = dict(metadata or {})
    scan = scan_keys(list(tensors), name)
    unmatched = list(scan.unmatched)
    for what, ks in scan.unsupported.items():
        log.warning("%s: %s tensors are not supported and are ignored (e.g. %s)", name, what, ks[0])
        unmatched += ks
    groups = {m: {s: tensors[k] for s, k in g.items()} for m, g in scan.groups.items()}
    targets, formats = scan.targets, scan.formats

    peft = _peft_alphas(metadata)
    adapters: dict[Target, Adapter] = {}
    for module, group in groups.items():
        target = targets[module]
        kinds = {K.SUFFIXES[s][0] for s in group} - {"*"}
        if len(kinds) != 1:
            unmatched += [f"{module}.{s}" for s in group]
            log.warning(
                "%s: %s has %s tensors; ignored", name, module, " and ".join(sorted(kinds)) or "only alpha"
            )
            continue
        kind = kinds.pop()
        alpha = group.get("alpha")
        named = {K.SUFFIXES[s][1]: t for s, t in group.items() if s != "alpha"}
        if target in adapters:
            raise AnimaError(f"{name}: layer {target} appears twice (under two key names)")
        try:
            adapter = from_tensors(kind, named, alpha)
        except ValueError as e:
            raise AnimaError(f"{name}: {module}: {e}") from None
        if kind == "lora" and alpha is None and module.split(".")[0] in peft:
            adapter.alpha = _peft_alpha(peft, module, adapter.rank)
        adapters[target] = adapter

    fmt = formats.most_common(1)[0][0] if len(formats) == 1 else "mixed"
    has_alpha = any(a.alpha is not None for a in adapters.values())
    if fmt == "comfy" and not has_alpha and all(a.kind == "lora" for a in adapters.values()):
        fmt = "diffusion-pipe"  # PEFT names without alpha (alpha = rank)
    dtypes = Counter(t.dtype for k, t in tensors.items() if not k.endswith(".alpha"))
    file = LoRAFile(name, fmt, adapters, unmatched, metadata, dtypes.most_common(1)[0][0] if dtypes else None)
    if unmatched:
        log.warning(
            "%s: %d of %d keys match no Anima layer and are ignored: %s%s",
            name, len(unmatched), len(tensors), ", ".join(unmatched[:SHOW]),
            ", ..." if len(unmatched) > SHOW else "",
        )  # fmt: skip
    return file


def load_lora(path: str | Path, name: str | None = None) -> LoRAFile:
    """Read a LoRA safetensors file (memory-mapped) in any supported format."""

    path = Path(path)
    header = read_header(path)
    kind = file_kinds.detect(header.keys())
    if kind.kind not in (file_kinds.LORA, file_kinds.UNKNOWN):
        raise AnimaError(f"{path} is {kind.description}, not a LoRA")
    return lora_from_tensors(load_mmap(path, header), header.metadata, name or path.stem)


# ------------------------------------------------------------------ writing
def _fold(adapter: LoRA) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up * scale) for alpha-less formats; fp32 when the file dtype would round the product."""
    down, up = adapter.down.detach(), adapter.up.detach()
    if adapter.scale == 1.0:
        return down, up
    folded = up.float() * adapter.scale
    rounded = folded.to(up.dtype)
    if torch.equal(rounded.float(), folded):
        return down, rounded
    return down.float(), folded


def state_dict_for(
    adapters: Mapping[Target, Adapter], fmt: str, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file in `fmt` ("comfy", "sd-scripts", "diffusers", "diffusion-pipe").

    `dtype` casts the factors (e.g. bf16 for a trained LoRA); alpha is written as a fp32 scalar.
    """
    if fmt not in K.FORMATS:
        raise AnimaError(f"unknown LoRA format {fmt!r}; use one of {', '.join(K.FORMATS)}")
    out: dict[str, torch.Tensor] = {}
    for target in sorted(adapters):
        adapter = adapters[target]
        named = {k: v.detach() for k, v in adapter.tensors().items()}
        if dtype is not None:
            named = {k: v.to(dtype) for k, v in named.items()}
        # sd-scripts' loader needs an alpha for every module: "no alpha" is written as alpha = rank.
        alpha = adapter.alpha if adapter.alpha is not None else float(adapter.rank or 1)
        if isinstance(adapter, LoRA) and fmt in K.FOLDS_ALPHA:
            named["down"], named["up"] = _fold(LoRA(named["down"], named["up"], adapter.alpha))
            alpha = None
        for name, t in named.items():
            out[K.key_for(fmt, target, adapter.kind, name)] = t.contiguous().cpu()
        if alpha is not None:
            out[K.key_for(fmt, target, adapter.kind, "alpha")] = torch.tensor(float(alpha))
    return out


def save_lora(
    adapters: Mapping[Target, Adapter],
    path: str | Path,
    fmt: str = "comfy",
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a LoRA file atomically. Metadata values must be strings (safetensors rule)."""

    tensors = state_dict_for(adapters, fmt, dtype)
    meta = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    if fmt in K.FOLDS_ALPHA:
        meta.pop("lora_adapter_metadata", None)  # its alpha is folded in now
    meta["anima_lora_format"] = fmt
    save(tensors, path, metadata=meta)
    return Path(path)
