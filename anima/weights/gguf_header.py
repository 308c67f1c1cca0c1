"""GGUF file headers: read with the `gguf` package, checked, tensors named as anima's loaders expect.

What is in circulation for Anima (the names are what decides, not the file name):

- stable-diffusion.cpp's converter (``sd-cli -M convert``) keeps the checkpoint's names (``net.*``
  for the official DiT) and writes no ``general.architecture``;
- ComfyUI-GGUF's converter (``tools/convert.py``, then llama.cpp's quantiser) strips ``net.`` and
  writes ``general.architecture = "cosmos"``: bare ``blocks.0...`` names, what `file_kinds` already
  knows as a bare DiT;
- the text encoder (e.g. mradermacher/Qwen3-0.6B-Base-GGUF) is llama.cpp's converter output:
  ``token_embd``, ``blk.N.attn_q`` ... names, renamed here to the Hugging Face ones (`LLAMA_NAMES`;
  Qwen3 uses NeoX RoPE, so unlike llama-architecture files its q/k rows are not permuted).

GGUF lists a tensor's dimensions innermost first (ggml's ``ne[0]`` is the row length); torch's order
is the reverse, so a [out, in] weight is stored as ``{in, out}``. The reversal happens once, in
`read_gguf` (`GGUFTensor.shape` is torch order). ComfyUI-GGUF records reshaped tensors' original
shapes as ``comfy.gguf.orig_shape.<name>``; those win. The header is parsed once per file version.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from anima.errors import AnimaError
from anima.model.ggml_types import BLOCKS

MAGIC = b"GGUF"
# llama.cpp tensor names -> Hugging Face Qwen3 names (without "model.").
LLAMA_NAMES = (
    ("token_embd.", "embed_tokens."), ("output_norm.", "norm."), ("output.", "lm_head."),
    (".attn_norm.", ".input_layernorm."), (".ffn_norm.", ".post_attention_layernorm."),
    (".attn_q_norm.", ".self_attn.q_norm."), (".attn_k_norm.", ".self_attn.k_norm."),
    (".attn_q.", ".self_attn.q_proj."), (".attn_k.", ".self_attn.k_proj."),
    (".attn_v.", ".self_attn.v_proj."), (".attn_output.", ".self_attn.o_proj."),
    (".ffn_gate.", ".mlp.gate_proj."), (".ffn_up.", ".mlp.up_proj."), (".ffn_down.", ".mlp.down_proj."),
)  # fmt: skip


@dataclass(frozen=True)
class GGUFTensor:
    qtype: str  # GGML type name (F32, F16, BF16, Q8_0, Q4_K, ...)
    shape: tuple[int, ...]  # torch order
    offset: int  # absolute byte offset in the file
    nbytes: int


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    arch: str | None  # general.architecture (None: stable-diffusion.cpp writes none)
    tensors: dict[str, GGUFTensor]  # names as anima's loaders use them (llama.cpp names renamed)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: t.shape for k, t in self.tensors.items()}

    def qtypes(self) -> dict[str, int]:
        """{GGML type name: tensor count}, most frequent first."""
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.qtype] = counts.get(t.qtype, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def is_gguf(path: str | Path) -> bool:
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


_HEADERS: dict[tuple[str, int, int], GGUFHeader] = {}


def read_gguf(path: str | Path) -> GGUFHeader:
    """Parse and check a GGUF file's header (no tensor data read); one-line AnimaError on any defect."""
    path = Path(path)
    if not path.is_file():
        raise AnimaError(f"{path}: file not found")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HEADERS:
        if len(_HEADERS) >= 256:
            _HEADERS.pop(next(iter(_HEADERS)))
        _HEADERS[key] = _parse(path, st.st_size)
    return _HEADERS[key]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _parse(path: Path, size: int) -> GGUFHeader:
    import gguf  # the format's own library (a core dependency); imported here to keep `anima` light

    try:
        reader = gguf.GGUFReader(path, "r")
    except ValueError as e:
        if "GGMLQuantizationType" in str(e):
            raise AnimaError(f"{path}: a tensor has an unknown GGML quant type ({_first_line(e)})") from None
        raise AnimaError(f"{path}: not a readable GGUF file, or truncated ({_first_line(e)})") from None
    except (OSError, IndexError, KeyError, TypeError) as e:
        raise AnimaError(f"{path}: not a readable GGUF file, or truncated ({_first_line(e)})") from None
    arch_field = reader.get_field("general.architecture")
    arch = str(arch_field.contents()) if arch_field is not None else None
    tensors: dict[str, GGUFTensor] = {}
    for t in reader.tensors:
        qtype = t.tensor_type.name
        if qtype not in BLOCKS:
            supported = ", ".join(BLOCKS)
            raise AnimaError(
                f"{path}: tensor '{t.name}' is {qtype}, a GGML type anima cannot dequantise "
                f"(supported: {supported})"
            )
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        orig = reader.get_field(f"comfy.gguf.orig_shape.{t.name}")
        if orig is not None:
            shape = tuple(int(v) for v in orig.contents())
        if t.data_offset + t.n_bytes > size:
            raise AnimaError(
                f"{path}: file is truncated ({size} bytes; tensor '{t.name}' needs "
                f"{t.data_offset + t.n_bytes}). Re-download it."
            )
        tensors[t.name] = GGUFTensor(qtype, shape, int(t.data_offset), int(t.n_bytes))
    if arch in ("qwen3", "llama", "qwen2") or any(k.startswith("blk.") for k in tensors):
        tensors = {llama_to_hf(k): v for k, v in tensors.items()}
    return GGUFHeader(path, arch, tensors)


def llama_to_hf(name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``layers.3.self_attn.q_proj.weight`` (llama.cpp -> Hugging Face)."""
    if name.startswith("blk."):
        name = "layers." + name[len("blk.") :]
    for old, new in LLAMA_NAMES:
        if name.startswith(old):
            return new + name[len(old) :]
        if old.startswith(".") and old in name:
            return name.replace(old, new, 1)
    return name
