"""8-bit safetensors files made for ComfyUI: recognised from their keys and loaded as 8-bit layers.

Two layouts, both read by ComfyUI's ``comfy/utils.py: convert_old_quants`` and ``comfy/ops.py:
MixedPrecisionOps`` (the ComfyUI snapshot of the fixtures):

- ``scaled_fp8`` (the older one): a marker tensor ``<prefix>scaled_fp8`` whose dtype is the weights'
  fp8 type (float32 meaning e4m3fn; two elements meaning "full-precision matmul"), and for each 8-bit
  layer ``<layer>.weight`` (fp8) with ``<layer>.scale_weight`` (float32) and optionally
  ``<layer>.scale_input`` (an activation scale; 1.0 means none).
- ``comfy_quant`` (per-layer mixed precision): ``<layer>.weight``, ``<layer>.weight_scale``, optional
  ``<layer>.input_scale``, and ``<layer>.comfy_quant``, a uint8 tensor holding JSON such as
  ``{"format": "float8_e4m3fn"}`` (or the same JSON per layer under ``layers`` in the header's
  ``_quantization_metadata``). Formats read here: ``float8_e4m3fn``, ``float8_e5m2`` and
  ``int8_tensorwise`` with a per-tensor or per-row scale, optionally with ``"convrot": true`` and
  ``"convrot_groupsize"`` (the INT8 nodes' row-wise ConvRot files, e.g. Bedovyy/Anima-INT8, written by
  silveroxides/convert_to_quant; their maths is comfy-kitchen's, see `anima.model.quant_linear`).
  Other formats (nvfp4, mxfp8, block-wise int8, ConvRot W4A4) are refused by name. ``weight_scale``
  keys without any JSON (the INT8 nodes' Int8TensorwiseOps files) take the format of the weight dtype.

Layers without these keys load as usual, so a mixed file keeps its bf16 layers in bf16; the 8-bit
layers stay 8-bit (`anima.weights.packed.Scaled8bit` -> `QuantLinear`), never expanded to a bf16 copy
of the whole model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import torch

from anima.errors import AnimaError
from anima.weights.file_format import layout
from anima.weights.packed import Scaled8bit

_COMFY_FORMATS = {"float8_e4m3fn": "fp8", "float8_e5m2": "fp8_e5m2", "int8_tensorwise": "int8"}
_DTYPE_FORMATS = {torch.float8_e4m3fn: "fp8", torch.float8_e5m2: "fp8_e5m2", torch.int8: "int8"}
_SCALE_KEYS = ("scale_weight", "scale_input", "weight_scale", "input_scale", "comfy_quant")


def _layer_configs(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], name: str) -> dict:
    configs: dict[str, dict] = {}
    if "_quantization_metadata" in metadata:
        try:
            configs.update(json.loads(metadata["_quantization_metadata"]).get("layers", {}))
        except (ValueError, AttributeError):
            raise AnimaError(f"{name}: unreadable _quantization_metadata in the header") from None
    for key, t in tensors.items():
        if key.endswith(".comfy_quant"):
            try:
                configs[key[: -len(".comfy_quant")]] = json.loads(bytes(t.to(torch.uint8).tolist()))
            except ValueError:
                raise AnimaError(f"{name}: unreadable comfy_quant entry {key}") from None
    return configs


def _comfy_layer(layer: str, cfg: dict, tensors: Mapping[str, torch.Tensor], name: str) -> Scaled8bit:
    params = cfg.get("params") if isinstance(cfg.get("params"), dict) else {}
    fmt_name = cfg.get("format")
    if fmt_name not in _COMFY_FORMATS:
        known = ", ".join(_COMFY_FORMATS)
        raise AnimaError(f"{name}: layer {layer} uses the '{fmt_name}' format, which anima cannot load "
                         f"(it reads {known})")  # fmt: skip
    fmt = _COMFY_FORMATS[fmt_name]
    weight, scale = tensors.get(f"{layer}.weight"), tensors.get(f"{layer}.weight_scale")
    if weight is None or scale is None:
        raise AnimaError(f"{name}: 8-bit layer {layer} lacks its weight or weight_scale")
    if fmt != "int8" and weight.dtype == torch.uint8:  # older files store fp8 bytes as uint8
        weight = weight.view(torch.float8_e4m3fn if fmt == "fp8" else torch.float8_e5m2)
    rotation = 0
    if cfg.get("convrot", params.get("convrot", False)):
        rotation = int(cfg.get("convrot_groupsize", params.get("convrot_groupsize", 256)))
    input_scale = tensors.get(f"{layer}.input_scale")
    return _scaled(layer, weight, scale, fmt, input_scale, rotation, name)


def _scaled(
    layer: str,
    weight: torch.Tensor,
    scale: torch.Tensor,
    fmt: str,
    input_scale: torch.Tensor | None,
    rotation: int,
    name: str,
) -> Scaled8bit:
    """One checked 8-bit layer (weight dtype and matrix shape, scale per tensor or per row)."""
    if weight.ndim != 2 or weight.dtype != {"int8": torch.int8, "fp8": torch.float8_e4m3fn,
                                             "fp8_e5m2": torch.float8_e5m2}[fmt]:  # fmt: skip
        raise AnimaError(f"{name}: 8-bit layer {layer} has a {weight.dtype} weight of shape "
                         f"{tuple(weight.shape)}, not a {fmt} matrix")  # fmt: skip
    if scale.numel() not in (1, weight.shape[0]):
        raise AnimaError(f"{name}: layer {layer}'s scale of shape {tuple(scale.shape)} is neither "
                         "per tensor nor per row (block-wise scales are not supported)")  # fmt: skip
    if input_scale is not None and (input_scale.numel() != 1 or float(input_scale) == 1.0):
        input_scale = None  # ComfyUI drops a unit activation scale too
    try:
        return Scaled8bit(weight, scale.float(), fmt, input_scale, rotation)
    except AnimaError as e:
        raise AnimaError(f"{name}: layer {layer}: {e}") from None


def pack(tensors: dict[str, torch.Tensor], metadata: Mapping[str, str], name: str) -> dict:
    """A state dict with each 8-bit layer's tensors replaced by one `Scaled8bit` under
    ``<layer>.weight`` and the markers removed; a plain file comes back unchanged."""
    kind = layout(tensors, metadata)
    if kind is None:
        return tensors
    out = dict(tensors)
    if kind == "comfy_quant":
        configs = _layer_configs(tensors, metadata, name)
        for key in tensors:  # scales without a config: the format follows the weight's dtype
            layer = key[: -len(".weight_scale")]
            if key.endswith(".weight_scale") and layer not in configs:
                weight = tensors.get(f"{layer}.weight")
                fmt = _DTYPE_FORMATS.get(weight.dtype) if weight is not None else None
                if fmt is None:
                    raise AnimaError(f"{name}: layer {layer} has a weight_scale but no 8-bit weight")
                configs[layer] = {"format": {v: k for k, v in _COMFY_FORMATS.items()}[fmt]}
        layers = {layer: _comfy_layer(layer, cfg, tensors, name) for layer, cfg in configs.items()}
    else:
        layers = {}
        for key in tensors:
            if key.endswith(".scale_weight"):
                layer = key[: -len(".scale_weight")]
                weight = tensors.get(f"{layer}.weight")
                if weight is None or weight.dtype not in _DTYPE_FORMATS:
                    raise AnimaError(f"{name}: layer {layer} has a scale_weight but no 8-bit weight")
                fmt = _DTYPE_FORMATS[weight.dtype]
                layers[layer] = _scaled(layer, weight, tensors[key], fmt, tensors.get(f"{layer}.scale_input"),
                                        0, name)  # fmt: skip
    for key in list(out):
        leaf = key.rpartition(".")[2]
        if (
            leaf == "scaled_fp8"
            or key == "scaled_fp8"
            or (leaf in _SCALE_KEYS and key.rpartition(".")[0] in layers)
        ):
            del out[key]
    for layer, packed in layers.items():
        out[f"{layer}.weight"] = packed
    return out
