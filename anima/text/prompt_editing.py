"""Prompt editing (A1111 syntax): one prompt text per sampling step. No torch.

- ``[a:b:when]`` uses ``a`` up to step ``when`` and ``b`` after it;
- ``[a:when]`` adds ``a`` after step ``when``; ``[a::when]`` removes it after step ``when``;
- ``[a|b|c]`` alternates every step: a, b, c, a, ...

``when`` below 1 is a fraction of the steps (``int(when * steps)``), 1 or more an absolute step,
A1111's classic rule. Steps are numbered from 1; step ``s`` uses the "before" text when
``s <= when``, so ``[a:b:0.5]`` over 10 steps gives exactly 5 steps of ``a`` and 5 of ``b``.
(A1111 compares its 0-based step counter against the same 1-based boundary, which gives ``a``
one step more; we do not copy that off-by-one.)

Everything else is left byte for byte as written, so prompts without editing syntax, ComfyUI
weights ``(x:1.2)`` and literal brackets ``[blue hair]`` (ComfyUI treats ``[]`` as plain text)
reach the tokenizer unchanged. A colon or bar only counts at the top level of a bracket: inside
parentheses (``[(x:1.2):y:0.5]``) or nested brackets it belongs to the inner text. Backslash
escapes (``\\[``) are never syntax. A bracket whose content is not valid editing syntax (mixed
``:`` and ``|``, a non-number ``when``) stays literal text, its inside still parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*")


@dataclass(frozen=True)
class _Scheduled:
    before: tuple
    after: tuple
    when: float


@dataclass(frozen=True)
class _Alternate:
    options: tuple


# A parsed prompt is a tuple of nodes: str (literal text), _Scheduled or _Alternate.


def _matching_bracket(text: str, start: int) -> int:
    """Index of the ``]`` closing the ``[`` at `start`, or -1."""
    depth = 0
    i = start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def split_top_level(text: str, sep: str) -> list[str]:
    """Split at `sep` characters outside any nested brackets or parentheses (escapes skipped)."""
    parts, depth_sq, depth_par, last, i = [], 0, 0, 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            depth_sq += 1
        elif c == "]":
            depth_sq = max(0, depth_sq - 1)
        elif c == "(":
            depth_par += 1
        elif c == ")":
            depth_par = max(0, depth_par - 1)
        elif c == sep and depth_sq == 0 and depth_par == 0:
            parts.append(text[last:i])
            last = i + 1
        i += 1
    parts.append(text[last:])
    return parts


def _bracket(inner: str) -> _Scheduled | _Alternate | None:
    bars = split_top_level(inner, "|")
    colons = split_top_level(inner, ":")
    if len(bars) > 1 and len(colons) == 1:
        return _Alternate(tuple(parse(p) for p in bars))
    if len(bars) > 1 or len(colons) not in (2, 3):
        return None
    m = _NUMBER.fullmatch(colons[-1])
    if m is None:
        return None
    when = float(m.group(1))
    if len(colons) == 2:
        return _Scheduled((), parse(colons[0]), when)
    return _Scheduled(parse(colons[0]), parse(colons[1]), when)


def parse(prompt: str) -> tuple:
    """The prompt as a tuple of literal strings and editing nodes."""
    nodes: list = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            nodes.append("".join(buf))
            buf.clear()

    i = 0
    while i < len(prompt):
        c = prompt[i]
        if c == "\\":
            buf.append(prompt[i : i + 2])
            i += 2
            continue
        if c == "[":
            end = _matching_bracket(prompt, i)
            if end >= 0:
                node = _bracket(prompt[i + 1 : end])
                flush()
                if node is None:  # literal brackets; editing inside them still works
                    nodes.extend(("[", *parse(prompt[i + 1 : end]), "]"))
                else:
                    nodes.append(node)
                i = end + 1
                continue
        buf.append(c)
        i += 1
    flush()
    return tuple(nodes)


def has_editing(prompt: str) -> bool:
    return any(not isinstance(n, str) for n in _walk(parse(prompt)))


def _walk(nodes: tuple):
    for n in nodes:
        yield n
        if isinstance(n, _Scheduled):
            yield from _walk(n.before)
            yield from _walk(n.after)
        elif isinstance(n, _Alternate):
            for o in n.options:
                yield from _walk(o)


def switch_step(when: float, steps: int) -> int:
    """The last step (1-based) of the "before" text: fractions of the steps below 1, else absolute."""
    value = when * steps if when < 1 else when
    return min(steps, int(value))


def _render(nodes: tuple, step: int, steps: int) -> str:
    out = []
    for n in nodes:
        if isinstance(n, str):
            out.append(n)
        elif isinstance(n, _Scheduled):
            out.append(_render(n.before if step <= switch_step(n.when, steps) else n.after, step, steps))
        else:
            out.append(_render(n.options[(step - 1) % len(n.options)], step, steps))
    return "".join(out)


def prompt_at(prompt: str, step: int, steps: int) -> str:
    """The prompt text used at 1-based `step` of `steps`."""
    if not 1 <= step <= steps:
        raise ValueError(f"step {step} is outside 1..{steps}")
    return _render(parse(prompt), step, steps)


def prompts_per_step(prompt: str, steps: int) -> list[str]:
    """Element i is the text for step i + 1. A prompt without editing gives `steps` copies of itself."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    tree = parse(prompt)
    if all(isinstance(n, str) for n in tree):
        return [prompt] * steps
    return [_render(tree, s, steps) for s in range(1, steps + 1)]
