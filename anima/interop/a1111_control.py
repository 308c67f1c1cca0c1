"""Control units in the A1111 infotext, as sd-webui-controlnet / Forge write them.

    ControlNet 0: "Module: none, Model: anima-lllite-any-test-like-v2 [8e4e921393], Weight: 0.8,
                   Resize Mode: Crop and Resize, Guidance Start: 0, Guidance End: 0.9, ..."
    Control 0 image: /abs/lineart.png, Control 0 image hash: 226c968e5f44df40

The ``ControlNet N`` value is the extension's own unit text (``Field Name: value`` pairs, no commas
or colons inside values), so A1111 and Forge paste it back into their ControlNet panel. The files are
anima's own keys (the extension records no image): ``Control N image`` / ``mask`` and their
digests, so ``--from-png`` finds them again. Reading accepts units written by the extension (its
other fields are ignored; they have no meaning for an LLLite patch).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from anima.errors import AnimaError
from anima.recipe import ControlUnit

_UNIT = re.compile(r"^ControlNet (\d+)$")
_FILE = re.compile(r"^Control (\d+) (image|image hash|mask|mask hash)$")
_MODEL = re.compile(r"^(.*?)\s*\[([0-9a-fA-F]{8,64})\]$")


def _number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _stem(model: str) -> str:
    """The patch's name as the extension shows models: the file name without folder and suffix."""
    name = model.replace("\\", "/").rsplit("/", 1)[-1]
    return name[: -len(".safetensors")] if name.endswith(".safetensors") else name


def control_pairs(units: Sequence[ControlUnit]) -> list[tuple[str, str]]:
    """(label, text) pairs for each unit, in order."""
    pairs = []
    for i, u in enumerate(units):
        model = _stem(u.model) + (f" [{u.model_hash}]" if u.model_hash else "")
        text = ", ".join((
            "Module: none", f"Model: {model}", f"Weight: {_number(u.strength)}",
            "Resize Mode: Crop and Resize", f"Guidance Start: {_number(u.start)}",
            f"Guidance End: {_number(u.end)}", "Pixel Perfect: False", "Control Mode: Balanced",
        ))  # fmt: skip
        pairs.append((f"ControlNet {i}", text))
        for what in ("image", "image hash", "mask", "mask hash"):
            value = getattr(u, what.replace(" ", "_"))
            if value:
                pairs.append((f"Control {i} {what}", value))
    return pairs


def _unit_fields(text: str, label: str) -> dict[str, str]:
    out = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition(": ")
        if not sep:
            raise AnimaError(f"A1111 parameters: cannot read {label} {text!r}")
        out[key.strip().lower()] = value.strip()
    return out


def controls_from_pairs(pairs: Mapping[str, str]) -> tuple[tuple[ControlUnit, ...], dict[str, str]]:
    """(the units, the pairs that are not about controls)."""
    units: dict[int, dict] = {}
    files: dict[int, dict] = {}
    rest: dict[str, str] = {}
    for key, value in pairs.items():
        if m := _UNIT.match(key):
            fields = _unit_fields(value, key)
            if fields.get("enabled", "true").lower() == "false":
                continue
            model = fields.get("model", "")
            unit: dict = {"model": model}
            if hm := _MODEL.match(model):
                unit = {"model": hm.group(1), "model_hash": hm.group(2)}
            try:
                names = (("weight", "strength"), ("guidance start", "start"), ("guidance end", "end"))
                for name, field in names:
                    if name in fields:
                        unit[field] = float(fields[name])
            except ValueError:
                raise AnimaError(f"A1111 parameters: cannot read {key} {value!r}") from None
            units[int(m.group(1))] = unit
        elif m := _FILE.match(key):
            files.setdefault(int(m.group(1)), {})[m.group(2).replace(" ", "_")] = value
        else:
            rest[key] = value
    out = []
    for i in sorted(units):
        try:
            out.append(ControlUnit(**units[i], **files.get(i, {})))
        except AnimaError as exc:
            raise AnimaError(f"A1111 parameters: ControlNet {i}: {exc}", setting=exc.setting) from None
    return tuple(out), rest
