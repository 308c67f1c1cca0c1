"""ControlNet-LLLite patch files: checked from the header, loaded strictly, hashed once.

A patch is one safetensors file in kohya's v2 named-key format (`anima.model.lllite`), found in a
models folder's ``model_patches/`` (ComfyUI's folder for them) or given as a path. Everything that
can be wrong with a file is said in one line naming it, from the header alone, before any model is
loaded: not a patch at all, the legacy ``lllite_modules.*`` layout (sd-scripts refuses it too),
a ``lllite.version`` other than "2", a patch made for a DiT of another depth or width.

Sizes are read from the tensors (`LLLiteConfig.from_shapes`), then the module is built on meta and
the memory-mapped tensors assigned with ``strict=True``, converted to the dtype the DiT computes in
(the reference keeps the file's dtype and casts on use: the same numbers).
"""

from __future__ import annotations

from pathlib import Path

import torch

from anima.errors import AnimaError
from anima.model.config import DiTConfig
from anima.model.lllite import VERSION, LLLite, LLLiteConfig
from anima.weights import file_kinds
from anima.weights.hashes import file_sha256
from anima.weights.header import read_header
from anima.weights.safetensors import load_mmap

LEGACY_PREFIX = "lllite_modules."
_HASHES: dict[tuple[str, int, int], str] = {}


def patch_config(path: str | Path, dit: DiTConfig | None = None) -> LLLiteConfig:
    """The config of the patch at `path` (header only); with `dit`, also checked to fit that DiT."""
    path = Path(path)
    header = read_header(path)
    keys = header.keys()
    if any(k.startswith(LEGACY_PREFIX) for k in keys):
        raise AnimaError(
            f"{path}: a legacy ControlNet-LLLite file (lllite_modules.* keys); only the named-key v2 "
            "format is supported: re-train it with current sd-scripts or `anima train`"
        )
    kind = file_kinds.detect(keys)
    if kind.kind != file_kinds.LLLITE:
        raise AnimaError(f"{path}: expected a ControlNet-LLLite patch; this looks like {kind.description}")
    version = header.metadata.get("lllite.version", VERSION)
    if version != VERSION:
        raise AnimaError(f"{path}: LLLite version {version!r} is not supported (only version {VERSION!r})")
    try:
        cfg = LLLiteConfig.from_shapes(header.shapes, header.metadata)
    except AnimaError as exc:
        raise AnimaError(f"{path}: not a supported LLLite patch: {exc}") from None
    if dit is not None:
        check_fits(cfg, dit, path)
    return cfg


def dit_config_of(path: str | Path) -> DiTConfig:
    """The config of the DiT in an Anima DiT file, from its header (to check patches before loading)."""
    shapes = read_header(path).shapes
    p = file_kinds.detect(shapes).prefix
    adapter = f"{p}llm_adapter."
    return DiTConfig.from_shapes({k[len(p):]: v for k, v in shapes.items()
                                  if k.startswith(p) and not k.startswith(adapter)})  # fmt: skip


def check_fits(cfg: LLLiteConfig, dit: DiTConfig, path: str | Path) -> None:
    """A patch for a DiT of another width, or of another depth, is refused (one line, naming the file).

    Depth: the reference applies whatever blocks exist and silently skips the rest, so a 28-block patch
    on a 40-block DiT would run and draw nonsense. A patch reaches a DiT's last block (every published
    one patches all blocks), so the highest patched block + 1 must equal the DiT's depth."""
    if cfg.width != dit.model_channels:
        raise AnimaError(
            f"{path}: this LLLite patch is for a DiT of width {cfg.width}; the model has width "
            f"{dit.model_channels}"
        )
    if cfg.block_count != dit.num_blocks:
        raise AnimaError(
            f"{path}: this LLLite patch was made for a {cfg.block_count}-block DiT; the model has "
            f"{dit.num_blocks} blocks"
        )


def load_lllite(
    path: str | Path,
    *,
    dit: DiTConfig | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LLLite:
    """Load a patch (checked against `dit` when given) onto `device` in `dtype`, frozen, eval mode."""
    path = Path(path)
    cfg = patch_config(path, dit)
    sd = load_mmap(path, read_header(path))
    with torch.device("meta"):
        module = LLLite(cfg)
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(want.keys() - sd.keys())
    unexpected = sorted(sd.keys() - want.keys())
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise AnimaError(f"{path}: not a supported LLLite patch ({what})")
    for k, shape in want.items():
        if tuple(sd[k].shape) != shape:
            raise AnimaError(f"{path}: not a supported LLLite patch ('{k}' has shape {tuple(sd[k].shape)}, "
                             f"expected {shape})")  # fmt: skip
    tensors = {k: v.to(device=torch.device(device), dtype=dtype) for k, v in sd.items()}
    module.load_state_dict(tensors, strict=True, assign=True)
    module.requires_grad_(False)
    return module.eval()


def patch_hash(path: str | Path) -> str:
    """A1111-style short hash (first 10 hex digits of the SHA-256), remembered per file version."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_sha256(path)[:10]
    return _HASHES[key]


def save_lllite(module: LLLite, path: str | Path, metadata: dict[str, str] | None = None,
                dtype: torch.dtype = torch.bfloat16) -> Path:  # fmt: skip
    """Write `module` in the v2 format the reference loads: named keys, its sizes' metadata, ``dtype``."""
    from anima.weights.safetensors import save

    tensors = {k: v.detach().to("cpu", dtype) for k, v in module.state_dict().items()}
    save(tensors, path, metadata={**module.cfg.metadata(), **(metadata or {})})
    return Path(path)
