"""Checkpoint files -> strict, memory-mapped modules.

Every loader follows the same four steps: read the header (no data), classify the file and refuse
the wrong kind in one line, infer the config from shapes, build the module on the meta device and
`load_state_dict(strict=True, assign=True)` the memory-mapped tensors into it. A bf16 file loaded
as bf16 on the CPU therefore never gets a second copy in RAM.

Quantised files take the same path: a GGUF file (`anima.weights.gguf_file`) or a ComfyUI 8-bit
safetensors file (`anima.weights.quant_files`) gives a state dict whose quantised entries are packed
(`anima.weights.packed`); after the strict checks their layers are swapped for layers that keep the
weights quantised.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from anima.errors import AnimaError
from anima.model.adapter import LLMAdapter
from anima.model.config import AdapterConfig, DiTConfig, TextEncoderConfig, VAEConfig
from anima.model.dit import MiniTrainDIT
from anima.model.text_encoder import Qwen3TextEncoder
from anima.model.vae import WanVAE
from anima.weights import checkpoint, diffusers_keys, file_kinds, quant_files
from anima.weights.gguf_file import is_gguf, load_gguf, read_gguf
from anima.weights.mapped_pages import file_mappings, release
from anima.weights.packed import install, is_packed
from anima.weights.safetensors import Header, load_mmap, read_header

StateDict = dict[str, torch.Tensor]


def shard_files(path: Path) -> list[Path]:
    """The safetensors files that make up one component: a file, or a (sharded) diffusers folder."""
    path = Path(path)
    if not path.exists():
        raise AnimaError(f"{path}: not found")
    if path.is_file():
        return [path]
    index = sorted(path.glob("*.safetensors.index.json"))
    if index:
        try:
            weight_map = json.loads(index[0].read_text())["weight_map"]
        except (OSError, ValueError, KeyError):
            raise AnimaError(f"{index[0]}: unreadable shard index") from None
        return [path / name for name in sorted(set(weight_map.values()))]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise AnimaError(f"{path}: folder holds no .safetensors file")
    return files


def read_headers(path: Path) -> tuple[list[Header], dict[str, tuple[int, ...]]]:
    headers = [read_header(p) for p in shard_files(path)]
    shapes: dict[str, tuple[int, ...]] = {}
    for h in headers:
        shapes.update(h.shapes)
    return headers, shapes


def _tensors(headers: list[Header]) -> StateDict:
    sd: StateDict = {}
    for h in headers:
        sd.update(load_mmap(h.path, h))
    return sd


def read_source(path: Path) -> tuple[dict[str, tuple[int, ...]], Callable[[], StateDict]]:
    """(tensor shapes from the header alone, a function reading the state dict) for a safetensors
    file or folder or a GGUF file; quantised entries of the state dict come packed."""
    if is_gguf(path):
        header = read_gguf(path)
        return header.shapes, lambda: load_gguf(path, header)
    headers, shapes = read_headers(path)
    metadata = {k: v for h in headers for k, v in h.metadata.items()}
    return shapes, lambda: quant_files.pack(_tensors(headers), metadata, str(path))


def _wrong_kind(path: Path, kind: file_kinds.Kind, wanted: str) -> AnimaError:
    if is_gguf(path) and kind.kind == file_kinds.UNKNOWN:
        arch = read_gguf(path).arch
        family = f"architecture '{arch}'" if arch else "no architecture field, tensor names not Anima's"
        return AnimaError(f"{path}: expected {wanted}, but this is a GGUF file of another model ({family})")
    hint = {
        file_kinds.DIT: "pass it as --dit",
        file_kinds.TEXT_ENCODER: "pass it as --text-encoder",
        file_kinds.VAE: "pass it as --vae",
        file_kinds.LORA: "load it with --lora",
    }.get(kind.kind, "")
    tail = f"; {hint}" if hint else ""
    return AnimaError(f"{path}: expected {wanted}, but this looks like {kind.description}{tail}")


def _strict_build(
    factory: Callable[[], nn.Module],
    sd: StateDict,
    path: Path,
    what: str,
    device: torch.device,
    dtype,
    *,
    embeddings: bool = False,
) -> nn.Module:
    """Meta build + strict assign, with errors that name the file and the first offending keys.

    Packed (quantised) entries become quantised layers (`anima.weights.packed.install`; `embeddings`:
    keep a GGML token embedding packed too)."""
    with torch.device("meta"):
        module = factory()
    expected = set(module.state_dict().keys())
    missing = sorted(expected - sd.keys())
    unexpected = sorted(sd.keys() - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise AnimaError(f"{path}: not a supported {what}: {'; '.join(parts)}")
    for k, v in module.state_dict().items():
        if tuple(v.shape) != tuple(sd[k].shape):
            raise AnimaError(
                f"{path}: not a supported {what}: '{k}' has shape {tuple(sd[k].shape)}, "
                f"expected {tuple(v.shape)} for the inferred config"
            )
    converted = {}
    mappings = None
    packed = {k: v for k, v in sd.items() if is_packed(v)}
    for k, v in sd.items():
        if k in packed:
            continue
        converted[k] = c = _convert(v, device, dtype)
        if c.data_ptr() != v.data_ptr():  # a copy: the mapped source pages are no longer needed
            mappings = file_mappings() if mappings is None else mappings
            release(v, mappings)
    if packed:
        converted.update(install(module, packed, converted, device, dtype, embeddings=embeddings))
    module.load_state_dict(converted, strict=True, assign=True)
    module.requires_grad_(False)
    module.eval()
    return module


def _convert(t: torch.Tensor, device: torch.device, dtype) -> torch.Tensor:
    if dtype is not None and t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device=device)


def load_dit(
    path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = torch.float32
) -> tuple[nn.Module, nn.Module]:
    """Load the DiT file (official `net.`, `model.diffusion_model.` or bare keys) -> (DiT, adapter)."""

    path, device = Path(path), torch.device(device)
    shapes, read = read_source(path)
    kind = file_kinds.detect(shapes)
    if kind.kind != file_kinds.DIT:
        raise _wrong_kind(path, kind, DESCRIPTIONS_WANTED["dit"])
    sd = read()
    p = kind.prefix
    if checkpoint.part_prefix(shapes, "dit"):  # a ComfyUI checkpoint: its DiT part only
        sd = {k: v for k, v in sd.items() if k.startswith(p)}
    adapter_prefix = f"{p}llm_adapter."
    dit_sd = {k[len(p) :]: v for k, v in sd.items() if k.startswith(p) and not k.startswith(adapter_prefix)}
    ad_sd = {k[len(adapter_prefix) :]: v for k, v in sd.items() if k.startswith(adapter_prefix)}
    stray = [k for k in sd if not k.startswith(p)]
    if stray:
        raise AnimaError(f"{path}: not a supported Anima DiT: {len(stray)} unexpected keys (e.g. {stray[0]})")
    dit_cfg = DiTConfig.from_shapes({k: tuple(v.shape) for k, v in dit_sd.items()})
    ad_cfg = AdapterConfig.from_shapes({k: tuple(v.shape) for k, v in ad_sd.items()})
    dit = _strict_build(lambda: MiniTrainDIT(dit_cfg), dit_sd, path, "Anima DiT", device, dtype)
    adapter = _strict_build(lambda: LLMAdapter(ad_cfg), ad_sd, path, "Anima LLM adapter", device, dtype)
    return dit, adapter


def load_dit_diffusers(
    transformer_dir: str | Path,
    text_conditioner_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.float32,
) -> tuple[nn.Module, nn.Module]:
    """Load `transformer/` + `text_conditioner/` of a diffusers-format Anima folder."""

    device = torch.device(device)
    t_dir, a_dir = Path(transformer_dir), Path(text_conditioner_dir)
    t_headers, t_shapes = read_headers(t_dir)
    kind = file_kinds.detect(t_shapes)
    if kind.kind != file_kinds.DIT_DIFFUSERS:
        raise _wrong_kind(t_dir, kind, "an Anima transformer in diffusers layout")
    a_headers, a_shapes = read_headers(a_dir)
    kind = file_kinds.detect(a_shapes)
    if kind.kind != file_kinds.ADAPTER:
        raise _wrong_kind(a_dir, kind, DESCRIPTIONS_WANTED["adapter"])
    # Infer the config on official names: rename the official key list of a width-probe build.
    official_probe = _official_dit_shapes(t_shapes)
    dit_cfg = DiTConfig.from_shapes(official_probe)
    with torch.device("meta"):
        official_keys = list(MiniTrainDIT(dit_cfg).state_dict().keys())
    inv = diffusers_keys.inverse(official_keys, diffusers_keys.dit_to_diffusers)
    raw = _tensors(t_headers)
    dit_sd = {inv.get(k, k): v for k, v in raw.items()}
    ad_cfg = AdapterConfig.from_shapes(a_shapes)
    dit = _strict_build(lambda: MiniTrainDIT(dit_cfg), dit_sd, t_dir, "Anima DiT", device, dtype)
    adapter = _strict_build(
        lambda: LLMAdapter(ad_cfg), _tensors(a_headers), a_dir, "Anima LLM adapter", device, dtype
    )
    return dit, adapter


def _official_dit_shapes(diffusers_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Official-named shapes from diffusers-named ones (only the keys config inference reads)."""
    n_blocks = len({k.split(".")[1] for k in diffusers_shapes if k.startswith("transformer_blocks.")})
    wanted = [
        "x_embedder.proj.1.weight",
        "blocks.0.self_attn.q_norm.weight",
        "final_layer.linear.weight",
        "blocks.0.mlp.layer1.weight",
        "blocks.0.adaln_modulation_self_attn.1.weight",
        "blocks.0.cross_attn.k_proj.weight",
    ]
    out: dict[str, tuple[int, ...]] = {}
    for k in wanted:
        d = diffusers_keys.dit_to_diffusers(k)
        if d not in diffusers_shapes:
            raise AnimaError(f"diffusers transformer is missing '{d}'")
        out[k] = diffusers_shapes[d]
    for i in range(n_blocks):
        out[f"blocks.{i}.mlp.layer1.weight"] = out["blocks.0.mlp.layer1.weight"]
    return out


def load_text_encoder(
    path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> nn.Module:
    """Load the Qwen3 text encoder (ComfyUI `model.*` file, or a diffusers `text_encoder/` folder).

    dtype None keeps the file's dtype; the encoder computes in fp32 regardless (see its module).
    """

    path, device = Path(path), torch.device(device)
    shapes, read = read_source(path)
    inside = checkpoint.part_prefix(shapes, "text_encoder")  # a ComfyUI checkpoint's text encoder
    kind = file_kinds.Kind(file_kinds.TEXT_ENCODER, inside) if inside else file_kinds.detect(shapes)
    if kind.kind != file_kinds.TEXT_ENCODER:
        raise _wrong_kind(path, kind, DESCRIPTIONS_WANTED["text_encoder"])
    p = kind.prefix
    sd = {k[len(p) :]: v for k, v in read().items() if k.startswith(p)}
    sd.pop("lm_head.weight", None)  # tied to the embedding; some exports carry it anyway
    cfg = TextEncoderConfig.from_shapes({k: tuple(v.shape) for k, v in sd.items()})
    with torch.device("meta"):
        want = next(k for k in Qwen3TextEncoder(cfg).state_dict() if k.endswith("embed_tokens.weight"))
    module_prefix = want[: -len("embed_tokens.weight")]
    sd = {module_prefix + k: v for k, v in sd.items()}
    return _strict_build(
        lambda: Qwen3TextEncoder(cfg), sd, path, "Qwen3 text encoder", device, dtype, embeddings=True
    )


def load_vae(
    path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = torch.float32
) -> nn.Module:
    """Load the Qwen-Image VAE (official Wan-2.1 names, or a diffusers `vae/` folder)."""

    path, device = Path(path), torch.device(device)
    headers, shapes = read_headers(path)
    sd = _tensors(headers)
    inside = checkpoint.part_prefix(shapes, "vae")  # a ComfyUI checkpoint: its VAE part only
    if inside:
        shapes = {k[len(inside) :]: v for k, v in shapes.items() if k.startswith(inside)}
        sd = {k[len(inside) :]: v for k, v in sd.items() if k.startswith(inside)}
    kind = file_kinds.detect(shapes)
    if kind.kind == file_kinds.VAE_DIFFUSERS:
        dim = shapes["decoder.norm_out.gamma"][0]
        cfg = VAEConfig(dim=dim, z_dim=shapes["post_quant_conv.weight"][0])
        with torch.device("meta"):
            official_keys = list(WanVAE(cfg).state_dict().keys())
        inv = diffusers_keys.inverse(official_keys, diffusers_keys.vae_to_diffusers)
        sd = {inv.get(k, k): v for k, v in sd.items()}
    elif kind.kind == file_kinds.VAE:
        cfg = VAEConfig.from_shapes(shapes)
    else:
        raise _wrong_kind(path, kind, DESCRIPTIONS_WANTED["vae"])
    return _strict_build(lambda: WanVAE(cfg), sd, path, "Qwen-Image VAE", device, dtype)


DESCRIPTIONS_WANTED = {
    "dit": "an Anima DiT file (e.g. anima-base-v1.0.safetensors)",
    "adapter": "an Anima LLM adapter (text_conditioner/)",
    "text_encoder": "the Qwen3 text encoder (qwen_3_06b_base.safetensors)",
    "vae": "the Qwen-Image VAE (qwen_image_vae.safetensors)",
}
