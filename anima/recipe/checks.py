"""The value checks every recipe setting goes through, each raising one `AnimaError` line.

Messages name the *setting* ("hires denoise must be in (0, 1]"), never a CLI flag or an HTTP field:
the front ends phrase the setting for their users (see `anima.cli.errors`, the server's 422s).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection
from typing import Any

from anima.errors import AnimaError


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def text(what: str, value: Any) -> str:
    if not isinstance(value, str):
        raise AnimaError(f"{what} must be text, got {type(value).__name__}")
    return value


def finite(what: str, value: Any, *, setting: str | None = None) -> float:
    if not is_number(value):
        raise AnimaError(f"{what} must be a finite number, got {value!r}", setting=setting)
    return float(value)


def in_range(
    what: str, value: Any, lo: float, hi: float, *, open_low: bool = False, setting: str | None = None
) -> float:
    """`value` as a float in [lo, hi] ((lo, hi] with `open_low`)."""
    ok = is_number(value) and (lo < value if open_low else lo <= value) and value <= hi
    if not ok:
        low = "(" if open_low else ""
        bound = (
            f"{low}{lo:g}, {hi:g}]" if open_low else (f"{lo:g}..{hi:g}" if hi != math.inf else f">= {lo:g}")
        )
        raise AnimaError(f"{what} must be in {bound}, got {value!r}", setting=setting)
    return float(value)


def int_in_range(what: str, value: Any, lo: int, hi: int, *, setting: str | None = None) -> int:
    if not (is_int(value) and lo <= value <= hi):
        raise AnimaError(f"{what} must be an integer in {lo}..{hi}, got {value!r}", setting=setting)
    return value


def choice(what: str, value: Any, allowed: Collection[str], *, setting: str | None = None) -> str:
    """`value` if it is one of `allowed`, else an error that suggests the nearest name."""
    if isinstance(value, str) and value in allowed:
        return value
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise AnimaError(
        f"unknown {what} {value!r}; {hint}choose from: {', '.join(sorted(allowed))}", setting=setting
    )


def one_line(what: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise AnimaError(f"{what} must be one line")
    return value
