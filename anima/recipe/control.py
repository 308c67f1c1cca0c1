"""`ControlUnit`: one ControlNet-LLLite patch applied to a run, as a recipe records it.

A recipe's ``controls`` apply in order, as chained ComfyUI ``AnimaLLLiteApply`` nodes do. Like the
img2img sources (`anima.recipe.settings.Sources`), a unit names its files (the patch by name or
path, the control image and mask by absolute path) together with a digest of each, so a re-run
finds them again and refuses a file that has changed since.

`strength` has ComfyUI's range [-10, 10]; `start` / `end` are fractions of the run (0 = the first
step's sigma 1, 1 = sigma 0), converted to a sigma window with the run's shift when it runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from anima.errors import AnimaError
from anima.recipe import checks

MAX_STRENGTH = 10.0  # ComfyUI's AnimaLLLiteApply slider range


@dataclass(frozen=True)
class ControlUnit:
    """One control patch: `model` is a patch name (a file stem in a models folder's
    ``model_patches/``) or a path; `model_hash` the first 10 hex digits of the file's SHA-256;
    `image` / `mask` the control image and the optional inpainting mask (paths, absolute once
    recorded) with their digests (`anima.workflows.init_image.file_digest`)."""

    model: str
    model_hash: str = ""
    image: str = ""
    image_hash: str = ""
    mask: str = ""
    mask_hash: str = ""
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    label = "control"

    def __post_init__(self) -> None:
        for name in ("model", "model_hash", "image", "image_hash", "mask", "mask_hash"):
            what = "control " + name.replace("_", " ")
            checks.one_line(what, checks.text(what, getattr(self, name)))
        if not self.model.strip():
            raise AnimaError("a control unit needs a model (a patch name or file)", setting="control_model")
        for name in ("strength", "start", "end"):
            if checks.is_number(getattr(self, name)):
                object.__setattr__(self, name, float(getattr(self, name)))
        top = MAX_STRENGTH
        checks.in_range("control strength", self.strength, -top, top, setting="control_strength")
        checks.in_range("control start", self.start, 0.0, 1.0, setting="control_start")
        checks.in_range("control end", self.end, 0.0, 1.0, setting="control_end")
        if self.start > self.end:
            raise AnimaError(
                f"control start {self.start:g} is after its end {self.end:g} (0 <= start <= end <= 1)",
                setting="control_start",
            )
        if self.mask and not self.image:
            raise AnimaError("a control mask needs a control image", setting="control_image")

    def with_(self, **changes: Any) -> ControlUnit:
        known = {f.name for f in fields(self)}
        for key in changes:
            if key not in known:
                raise AnimaError(f"unknown control setting {key!r}")
        return dataclasses.replace(self, **changes)

    def changes(self) -> dict[str, Any]:
        """The fields that differ from the defaults (the model always): the unit's JSON form."""
        default = ControlUnit("x")
        out: dict[str, Any] = {"model": self.model}
        for f in fields(self):
            if f.name != "model" and getattr(self, f.name) != getattr(default, f.name):
                out[f.name] = getattr(self, f.name)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> ControlUnit:
        """A unit from its JSON object; wrong types and unknown fields are one line."""
        if not isinstance(data, dict):
            raise AnimaError(f"a control unit must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        for key, value in data.items():
            if key not in names:
                raise AnimaError(f"unknown control setting {key!r} in the recipe")
            if isinstance(value, list | dict | bool) or value is None:
                raise AnimaError(f"recipe control {key} has the wrong type: {type(value).__name__}")
        if "model" not in data:
            raise AnimaError("a control unit in the recipe has no model")
        return cls(**data)
