"""ComfyUI prompt-weight syntax -> weighted text segments (anima-spec §3.2, §6). No torch.

The rules, as ComfyUI applies them (and as the tiny fixtures pin them):

- ``(text)`` multiplies the weight of its content by 1.1; nesting multiplies again: ``((x))`` = 1.21.
- ``(text:w)`` *sets* the weight to ``w``: whatever the enclosing parentheses had built up is discarded
  (``((x:0.8))`` = 0.8), while parentheses nested inside multiply on top of ``w``. The weight is the
  text after the *last* colon, parsed with Python's ``float`` (so ``inf``, ``1e1`` or `` 1.2 `` parse).
  A colon at the very start of the group does not count, and a weight that does not parse leaves the
  group a plain ``( )`` (x1.1) with the colon kept in the text.
- ``\\(`` and ``\\)`` are literal parentheses; the backslash is dropped. ``[x]`` is plain text.
- Unbalanced parentheses follow ComfyUI's depth counter: a stray ``)`` drives the depth below zero and,
  like everything until the depth is back at zero, is plain text; an unclosed ``(`` makes the rest of
  the prompt one plain segment that keeps the ``(``.

Weights are Python floats computed in double precision (1.1 * 1.1 = 1.2100000000000002); the model
consumes them as float32 (see `as_float32`), which is what the reference does.
"""

from __future__ import annotations

import struct

EMPHASIS = 1.1

# An escaped parenthesis is kept as this two-character atom while parsing, so it can never open or
# close a group, and becomes the bare character when the segment text is rebuilt.
_ESCAPED = {"\\(": "(", "\\)": ")"}


def as_float32(value: float) -> float:
    """The float32 value nearest to `value`, as a Python float (what torch.tensor(..., float32) holds)."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def _atoms(text: str) -> list[str]:
    """Split into single characters, except that ``\\(`` and ``\\)`` stay together as one atom."""
    out: list[str] = []
    i = 0
    while i < len(text):
        pair = text[i : i + 2]
        if pair in _ESCAPED:
            out.append(pair)
            i += 2
        else:
            out.append(text[i])
            i += 1
    return out


def _top_level_groups(atoms: list[str]) -> list[list[str]]:
    """Cut at depth-0 parenthesised groups: plain runs and ``( ... )`` groups alternate."""
    groups: list[list[str]] = []
    current: list[str] = []
    depth = 0
    for a in atoms:
        if a == "(":
            if depth == 0 and current:
                groups.append(current)
                current = []
            current.append(a)
            depth += 1
        elif a == ")":
            depth -= 1
            current.append(a)
            if depth == 0:
                groups.append(current)
                current = []
        else:
            current.append(a)
    if current:
        groups.append(current)
    return groups


def _text(atoms: list[str]) -> str:
    return "".join(_ESCAPED.get(a, a) for a in atoms)


def _explicit_weight(inner: list[str]) -> tuple[list[str], float] | None:
    """``text:w`` -> (text atoms, w) when the part after the last colon parses as a float."""
    colon = max((i for i, a in enumerate(inner) if a == ":"), default=-1)
    if colon <= 0:
        return None
    try:
        weight = float(_text(inner[colon + 1 :]))
    except ValueError:
        return None
    return inner[:colon], weight


def _parse(atoms: list[str], weight: float, out: list[tuple[str, float]]) -> None:
    for group in _top_level_groups(atoms):
        if len(group) >= 2 and group[0] == "(" and group[-1] == ")":
            inner = group[1:-1]
            explicit = _explicit_weight(inner)
            if explicit is None:
                _parse(inner, weight * EMPHASIS, out)
            else:
                _parse(explicit[0], explicit[1], out)
        else:
            out.append((_text(group), weight))


def parse_prompt_weights(prompt: str) -> list[tuple[str, float]]:
    """Split `prompt` into (segment text, weight) pieces in prompt order.

    Segments are never empty; an empty prompt gives []. Adjacent segments are not merged: each one is
    tokenized on its own, which is part of the reference behaviour.
    """
    out: list[tuple[str, float]] = []
    _parse(_atoms(prompt), 1.0, out)
    return out
