"""The JSON form of a recipe (``anima-recipe/2``), lossless in both directions.

Core fields are written in full; a settings group only when it differs from its defaults, and then
only its non-default fields, so a plain recipe stays short and old readers of the core fields keep
working. Wrong types and unknown fields are one-line errors naming the field. Recipes written by
earlier versions (``anima-recipe/1``, settings as A1111 text pairs) are read by
`anima.interop.legacy`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from anima.errors import AnimaError
from anima.recipe.checks import is_int, is_number
from anima.recipe.control import ControlUnit
from anima.recipe.regions import Region
from anima.recipe.settings import GROUPS, GridAxis

FORMAT = "anima-recipe/2"

_STR_FIELDS = {"prompt", "negative_prompt", "sampler", "scheduler", "model", "model_hash", "dtype"}
_INT_FIELDS = {"width", "height", "steps", "seed", "batch_size"}
_FLOAT_FIELDS = {"cfg", "shift", "denoise"}


def to_dict(recipe) -> dict[str, Any]:
    """JSON-ready dict: core fields, `loras` as [[name, strength]], non-default groups as objects."""
    out: dict[str, Any] = {"format": FORMAT}
    for f in fields(recipe):
        value = getattr(recipe, f.name)
        if f.name in GROUPS:
            changed = _group_changes(value)
            if changed:
                out[f.name] = changed
        elif f.name == "loras":
            out["loras"] = [[n, w] for n, w in value]
        elif f.name == "grid":
            if value:
                out["grid"] = [{"name": a.name, "values": list(a.values)} for a in value]
        elif f.name == "regions":
            if value:
                out["regions"] = [r.to_dict() for r in value]
        elif f.name == "extra":
            out["extra"] = dict(value)
        elif f.name == "controls":
            if value:
                out["controls"] = [unit.changes() for unit in value]
        else:
            out[f.name] = value
    return out


def to_json(recipe) -> str:
    return json.dumps(to_dict(recipe), ensure_ascii=False)


def from_dict(cls, data: Mapping[str, Any]):
    """Inverse of `to_dict` for recipe class `cls`."""
    if not isinstance(data, Mapping):
        raise AnimaError(f"a recipe must be a JSON object, got {type(data).__name__}")
    data = dict(data)
    fmt = data.pop("format", FORMAT)
    if fmt != FORMAT:
        raise AnimaError(f"unsupported recipe format {fmt!r} (this anima reads {FORMAT!r})")
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            raise AnimaError(f"unknown recipe field {key!r}")
    if "prompt" not in data:
        raise AnimaError("recipe field 'prompt' is missing")
    return cls(**{key: _coerce(key, value) for key, value in data.items()})


def from_json(cls, text: str):
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnimaError(f"recipe is not valid JSON: {exc}") from None
    return from_dict(cls, data)


def _group_changes(group) -> dict[str, Any]:
    default = type(group)()
    return {
        f.name: getattr(group, f.name)
        for f in fields(group)
        if getattr(group, f.name) != getattr(default, f.name)
    }


def _coerce(key: str, value: Any) -> Any:
    """Check one JSON value's type; ints are accepted for float fields (JSON writes 4.0 as 4 too)."""
    if key in _STR_FIELDS and isinstance(value, str):
        return value
    if key in _INT_FIELDS and is_int(value):
        return value
    if key in _FLOAT_FIELDS and is_number(value):
        return float(value)
    if key == "loras" and isinstance(value, list | tuple):
        pairs = []
        for item in value:
            if not (isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise AnimaError(f"recipe field 'loras' needs [name, strength] pairs, got {item!r}")
            if not is_number(item[1]):
                raise AnimaError(f"recipe field 'loras': strength of {item[0]!r} is not a number")
            pairs.append((item[0], float(item[1])))
        return tuple(pairs)
    if key == "extra" and isinstance(value, Mapping):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise AnimaError("recipe field 'extra' must map strings to strings")
        return tuple(value.items())
    if key == "grid" and isinstance(value, list):
        try:
            return tuple(GridAxis(str(a["name"]), tuple(str(v) for v in a["values"])) for a in value)
        except (KeyError, TypeError):
            raise AnimaError("recipe field 'grid' needs [{name, values}] axes") from None
    if key == "regions" and isinstance(value, list):
        return tuple(Region.from_dict(r) for r in value)
    if key == "controls" and isinstance(value, list):
        try:
            return tuple(ControlUnit.from_dict(unit) for unit in value)
        except AnimaError as exc:
            raise AnimaError(f"recipe controls: {exc}", setting=exc.setting) from None
    if key in GROUPS and isinstance(value, Mapping):
        return _group(key, value)
    raise AnimaError(f"recipe field {key!r} has the wrong type: {type(value).__name__} ({value!r:.60})")


def _group(key: str, value: Mapping[str, Any]):
    kind = GROUPS[key]
    names = {f.name: f for f in fields(kind)}
    value = dict(value)
    for name, v in value.items():
        if name not in names:
            raise AnimaError(f"unknown {key} setting {name!r} in the recipe")
        if isinstance(v, list) and isinstance(names[name].default, tuple):
            value[name] = _pairs(f"{key}.{name}", v)  # a group's (name, value) pairs
        elif isinstance(v, list | dict):
            raise AnimaError(f"recipe {key}.{name} has the wrong type: {type(v).__name__}")
    try:
        return kind(**value)
    except AnimaError as exc:
        raise AnimaError(f"recipe {key} settings: {exc}", setting=exc.setting) from None


def _pairs(what: str, items: list) -> tuple[tuple[str, Any], ...]:
    """[[name, value], ...] -> a tuple of pairs (the group checks the values)."""
    if not all(isinstance(i, list | tuple) and len(i) == 2 and isinstance(i[0], str) for i in items):
        raise AnimaError(f"recipe {what} needs [name, value] pairs")
    return tuple((i[0], i[1]) for i in items)
