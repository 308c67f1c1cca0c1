"""A generation recipe: every setting needed to reproduce an image, as one frozen value.

A `Recipe` is what the CLI builds from flags, what the server receives, and what a PNG carries in
its ``anima_recipe`` chunk. It is plain data (no torch): `to_json` / `from_json` round-trip exactly,
and `validate` turns bad values into one-line `AnimaError`s before any model is loaded.

Sampler and scheduler names are checked against collections the caller passes in, because the
registries live in `anima.sampling`; this module stays a leaf.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from anima.errors import AnimaError

DEFAULT_NEGATIVE = "worst quality, low quality, score_1, score_2, score_3, blurry, jpeg artifacts, sepia"
DTYPES = ("fp32", "bf16", "fp16")
RECIPE_FORMAT = "anima-recipe/1"

MIN_SIZE = 16
MAX_SIZE = 8192
SIZE_MULTIPLE = 16  # VAE factor 8 x DiT patch 2: anything else would need padding or cropping
MAX_SEED = 2**64 - 1

# Named aspect presets near 1 MP (the training resolution of every Anima release).
# Read-only so that no caller can change a preset for everyone else.
SIZE_PRESETS: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        "square": (1024, 1024),
        "portrait": (896, 1152),
        "landscape": (1152, 896),
        "tall": (832, 1216),
        "wide": (1216, 832),
        "phone": (768, 1344),
        "cinema": (1344, 768),
    }
)

# Keys of `extra` become "Key: value" pairs in the A1111 infotext, so they follow its key syntax.
_EXTRA_KEY = re.compile(r"^[A-Za-z][\w \-/+.()]*$")


@dataclass(frozen=True)
class Recipe:
    """Everything that determines an image. Hashable, so it can key caches and dedupe jobs.

    `loras` holds (name, strength) pairs; `extra` holds (key, value) string pairs for settings that
    other modules add (guidance variants, hires passes, ...) and for unknown A1111 fields on import.
    Lists and dicts given for them are frozen into tuples.
    """

    prompt: str
    negative_prompt: str = DEFAULT_NEGATIVE
    width: int = 1024
    height: int = 1024
    steps: int = 30
    cfg: float = 4.0
    sampler: str = "er_sde"
    scheduler: str = "simple"
    shift: float = 3.0
    seed: int = 0
    batch_size: int = 1
    denoise: float = 1.0
    model: str = ""
    model_hash: str = ""
    dtype: str = "fp32"
    loras: tuple[tuple[str, float], ...] = ()
    extra: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # Frozen + hashable needs tuples; accept the natural JSON/Python shapes and freeze them.
        loras = self.loras.items() if isinstance(self.loras, Mapping) else self.loras
        extra = self.extra.items() if isinstance(self.extra, Mapping) else self.extra
        object.__setattr__(self, "loras", tuple((str(n), float(w)) for n, w in loras))
        object.__setattr__(self, "extra", tuple((str(k), str(v)) for k, v in extra))

    # ----------------------------------------------------------------- validation
    def validate(self, samplers: Collection[str], schedulers: Collection[str]) -> Recipe:
        """Raise `AnimaError` (one line) for the first bad value; return self when all is well."""
        for what in ("prompt", "negative_prompt", "model", "model_hash"):
            if not isinstance(getattr(self, what), str):
                raise AnimaError(f"{what} must be text, got {type(getattr(self, what)).__name__}")
        _check_size("width", self.width)
        _check_size("height", self.height)
        if not _is_int(self.steps) or self.steps <= 0:
            raise AnimaError(f"steps must be a positive integer, got {self.steps!r}")
        if not _finite(self.cfg) or self.cfg < 0:
            raise AnimaError(f"cfg must be a number >= 0, got {self.cfg!r}")
        if not _finite(self.shift) or self.shift <= 0:
            raise AnimaError(f"shift must be a number > 0, got {self.shift!r}")
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise AnimaError(f"seed must be an integer in 0..2**64-1, got {self.seed!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise AnimaError(f"batch size must be an integer >= 1, got {self.batch_size!r}")
        if not _finite(self.denoise) or not 0 < self.denoise <= 1:
            raise AnimaError(f"denoise must be in (0, 1], got {self.denoise!r}")
        if self.dtype not in DTYPES:
            raise AnimaError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        _check_name("sampler", self.sampler, samplers)
        _check_name("scheduler", self.scheduler, schedulers)
        for name, strength in self.loras:
            if not name or not _finite(strength):
                raise AnimaError(f"bad LoRA entry {name!r}: {strength!r} (need a name and a finite strength)")
        for key, value in self.extra:
            if not _EXTRA_KEY.match(key) or "\n" in value:
                raise AnimaError(f"bad extra setting {key!r}: keys are words, values one line")
        return self

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; `loras` as [[name, strength], ...], `extra` as an object."""
        out: dict[str, Any] = {"format": RECIPE_FORMAT}
        for f in fields(self):
            out[f.name] = getattr(self, f.name)
        out["loras"] = [[n, w] for n, w in self.loras]
        out["extra"] = dict(self.extra)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """Inverse of `to_dict`. Unknown fields and wrong types raise `AnimaError` naming the field."""
        if not isinstance(data, Mapping):
            raise AnimaError(f"a recipe must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        fmt = data.pop("format", RECIPE_FORMAT)
        if fmt != RECIPE_FORMAT:
            raise AnimaError(f"unsupported recipe format {fmt!r} (this anima reads {RECIPE_FORMAT!r})")
        known = {f.name: f for f in fields(cls)}
        for key in data:
            if key not in known:
                raise AnimaError(f"unknown recipe field {key!r}")
        if "prompt" not in data:
            raise AnimaError("recipe field 'prompt' is missing")
        kwargs = {key: _coerce(key, value) for key, value in data.items()}
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AnimaError(f"recipe is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def with_(self, **changes: Any) -> Recipe:
        """A copy with some fields replaced (``recipe.with_(seed=7)``)."""
        known = {f.name for f in fields(self)}
        for key in changes:
            if key not in known:
                raise AnimaError(f"unknown recipe field {key!r}")
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------- sizes
def nearest_valid_size(value: int) -> int:
    """The multiple of 16 closest to `value` (ties go up), clamped to the allowed range."""
    snapped = (int(value) + SIZE_MULTIPLE // 2) // SIZE_MULTIPLE * SIZE_MULTIPLE
    return min(max(snapped, MIN_SIZE), MAX_SIZE)


def _check_size(what: str, value: Any) -> None:
    if not _is_int(value):
        raise AnimaError(f"{what} must be an integer, got {value!r}")
    if value < MIN_SIZE or value > MAX_SIZE:
        raise AnimaError(f"{what} {value} is outside {MIN_SIZE}..{MAX_SIZE}")
    if value % SIZE_MULTIPLE:
        raise AnimaError(
            f"{what} {value} is not a multiple of {SIZE_MULTIPLE}; "
            f"the nearest valid {what} is {nearest_valid_size(value)}"
        )


def parse_size(text: str) -> tuple[int, int]:
    """``--size`` argument: a preset name (``portrait``) or ``WIDTHxHEIGHT`` -> (width, height)."""
    spec = text.strip().lower()
    if spec in SIZE_PRESETS:
        return SIZE_PRESETS[spec]
    m = re.fullmatch(r"(\d+)\s*[x×*]\s*(\d+)", spec)
    if not m:
        names = ", ".join(f"{k} ({w}x{h})" for k, (w, h) in SIZE_PRESETS.items())
        raise AnimaError(f"size {text!r} is neither WIDTHxHEIGHT nor a preset: {names}")
    width, height = int(m.group(1)), int(m.group(2))
    _check_size("width", width)
    _check_size("height", height)
    return width, height


# --------------------------------------------------------------------- helpers
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_name(what: str, name: str, allowed: Collection[str]) -> None:
    if name in allowed:
        return
    close = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise AnimaError(f"unknown {what} {name!r}; {hint}choose from: {', '.join(sorted(allowed))}")


_STR_FIELDS = {"prompt", "negative_prompt", "sampler", "scheduler", "model", "model_hash", "dtype"}
_INT_FIELDS = {"width", "height", "steps", "seed", "batch_size"}
_FLOAT_FIELDS = {"cfg", "shift", "denoise"}


def _coerce(key: str, value: Any) -> Any:
    """Check one JSON value's type; ints are accepted for float fields (JSON writes 4.0 as 4 too)."""
    if key in _STR_FIELDS and isinstance(value, str):
        return value
    if key in _INT_FIELDS and _is_int(value):
        return value
    if key in _FLOAT_FIELDS and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if key == "loras" and isinstance(value, list | tuple):
        pairs = []
        for item in value:
            if not (isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise AnimaError(f"recipe field 'loras' needs [name, strength] pairs, got {item!r}")
            if not isinstance(item[1], int | float) or isinstance(item[1], bool):
                raise AnimaError(f"recipe field 'loras': strength of {item[0]!r} is not a number")
            pairs.append((item[0], float(item[1])))
        return tuple(pairs)
    if key == "extra" and isinstance(value, Mapping):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise AnimaError("recipe field 'extra' must map strings to strings")
        return tuple(value.items())
    raise AnimaError(f"recipe field {key!r} has the wrong type: {type(value).__name__} ({value!r:.60})")
