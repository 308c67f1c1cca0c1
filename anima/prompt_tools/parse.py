"""Prompt text -> dataset header, tag units and prose blocks, and back. No torch.

An Anima prompt is, per the model card, an optional dataset header (``ye-pop`` or ``deviantart`` on
line 1, optionally a title on line 2), then Danbooru-style tags separated by commas, optionally
followed by natural-language sentences. This module cuts the text into those parts without losing
a character that matters:

- **Tag units** are the pieces between commas (or newlines) at parenthesis depth 0, so a weighted
  group such as ``(red hair, blue eyes:1.2)`` stays one unit. ``\\(`` and ``\\)`` are literal
  parentheses (ComfyUI's escape) and never change the depth.
- **Prose** is recognised per piece (a sentence end, a capitalised phrase with lowercase words, or
  six words and more) and continues until a sentence ends; a prose block is kept verbatim, commas
  included, because reordering parts of a sentence would change its meaning.

`unparse` writes tags joined by ``", "``, then the prose blocks; parse(unparse(p)) gives back the
same parts, which is what makes `format` idempotent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Dataset tags of the non-anime training data, as the card spells them, and the spellings users type.
DATASET_TAGS = ("ye-pop", "deviantart")
_DATASET_ALIASES = {
    "ye-pop": "ye-pop", "ye pop": "ye-pop", "ye_pop": "ye-pop", "yepop": "ye-pop",
    "deviantart": "deviantart", "deviant art": "deviantart", "deviant_art": "deviantart",
}  # fmt: skip

_TERMINATORS = ".!?"
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=\S)")


def dataset_tag(text: str) -> str | None:
    """The canonical dataset tag `text` spells (any case, ``_``/space/none for the hyphen), or None."""
    return _DATASET_ALIASES.get(" ".join(text.strip().lower().split()))


@dataclass(frozen=True)
class Unit:
    """One tag unit or one prose block. `raw` is the text as written (stripped)."""

    kind: str  # "tag" or "prose"
    raw: str


@dataclass(frozen=True)
class ParsedPrompt:
    """`header`: the dataset tag line and optional title line, verbatim; `units`: the body in order."""

    header: tuple[str, ...]
    units: tuple[Unit, ...]

    @property
    def tags(self) -> list[str]:
        return [u.raw for u in self.units if u.kind == "tag"]

    @property
    def prose(self) -> list[str]:
        return [u.raw for u in self.units if u.kind == "prose"]


# --------------------------------------------------------------------- wrappers
def _is_escaped(text: str, i: int) -> bool:
    return i > 0 and text[i - 1] == "\\"


def matching_paren(text: str, start: int) -> int:
    """Index of the ``)`` closing the ``(`` at `start`, or -1 when it is never closed."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c in "()" and _is_escaped(text, i):
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
    return -1


_WEIGHT_SUFFIX = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*$")


def split_wrapper(raw: str) -> tuple[str, str, str]:
    """``((x:1.2))`` -> (``((``, ``x``, ``:1.2))``): the weight parentheses around a whole unit.

    Only parentheses that enclose the entire unit count; ``(a) (b)`` has no wrapper. The weight is
    the number after the last colon inside the innermost wrapper, as ComfyUI reads it.
    """
    opens, closes = "", ""
    inner = raw
    while inner.startswith("(") and matching_paren(inner, 0) == len(inner) - 1:
        body = inner[1:-1]
        m = _WEIGHT_SUFFIX.search(body)
        if m and m.start() > 0 and _depth_zero_at(body, m.start()):
            return opens + "(", body[: m.start()].strip(), body[m.start() :].strip() + ")" + closes
        opens += "("
        closes = ")" + closes
        inner = body.strip()
    return opens, inner, closes


def _depth_zero_at(text: str, pos: int, opens: str = "(", closes: str = ")") -> bool:
    """Whether `pos` is outside every group (a stray closer counts as nothing, as in splitting)."""
    depth = 0
    for i, c in enumerate(text[:pos]):
        if (c in opens or c in closes) and _is_escaped(text, i):
            continue
        if c in opens:
            depth += 1
        elif c in closes:
            depth = max(depth - 1, 0)
    return depth == 0


def is_balanced(text: str) -> bool:
    """Every unescaped ( and [ is closed, and nothing closes what was never opened."""
    for o, c in ("()", "[]"):
        depth = 0
        for i, ch in enumerate(text):
            if ch in (o, c) and _is_escaped(text, i):
                continue
            depth += 1 if ch == o else -1 if ch == c else 0
            if depth < 0:
                return False
        if depth:
            return False
    return True


def split_top_level(text: str, seps: str = ",\n") -> list[str]:
    """Cut `text` at the separator characters outside (), [] and {} (escapes ignored).

    Brackets count because prompt editing (``[cat ears, fox ears:0.5]``) and wildcard groups hold
    commas that belong to one unit; cutting there would break the syntax when tags are reordered.
    """
    pieces: list[str] = []
    depth = 0
    start = 0
    for i, c in enumerate(text):
        if c in "()[]{}" and _is_escaped(text, i):
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(depth - 1, 0)
        elif c in seps and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    pieces.append(text[start:])
    return pieces


# --------------------------------------------------------------------- prose
def looks_prose(piece: str) -> bool:
    """Whether one comma-separated piece reads as natural language rather than a tag."""
    text = piece.strip()
    if not text or text[0] in "([{@":
        return False  # weight groups, prompt editing, wildcards and artist tags
    # Underscores count as spaces and case only matters with lowercase words next to it, so that
    # the tag fixes (spaces, lowercase) never turn a tag into prose or back.
    words = text.replace("_", " ").split()
    ends = text[-1] in _TERMINATORS
    if len(words) >= 6 or (ends and len(words) >= 5):
        return True
    capital = text[0].isupper() and any(w.strip(".,!?;:'\"").isalpha() and w.islower() for w in words[1:])
    if capital and len(words) >= 3:
        return True
    return capital and ends and len(words) >= 2  # "She smiles." but not "LOOKING AT VIEWER."


def _pieces(body: str) -> list[str]:
    """Comma/newline pieces, each further cut after sentence ends (``tag. A sentence``)."""
    out: list[str] = []
    for piece in split_top_level(body):
        parts = _split_sentences(piece)
        out.extend(parts)
    return out


def _split_sentences(piece: str) -> list[str]:
    """Cut a piece after ``.``/``!``/``?`` + whitespace at depth 0 (not inside a weight group)."""
    cuts = [
        m.start() for m in _SENTENCE_BREAK.finditer(piece) if _depth_zero_at(piece, m.start(), "([{", ")]}")
    ]
    if not cuts:
        return [piece]
    parts, start = [], 0
    for c in cuts:
        parts.append(piece[start:c])
        start = c
    parts.append(piece[start:])
    return parts


def parse(prompt: str) -> ParsedPrompt:
    """Split a prompt into its header lines and body units (see the module docstring)."""
    lines = prompt.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    header: list[str] = []
    if lines and dataset_tag(lines[0]) is not None:
        header.append(lines[0].strip())
        rest = [ln for ln in lines[1:]]
        nonempty = [i for i, ln in enumerate(rest) if ln.strip()]
        # Line 2 is a title when more lines follow it and it is not a list of tags.
        if len(nonempty) >= 2 and "," not in rest[nonempty[0]]:
            header.append(rest[nonempty[0]].strip())
            rest = rest[nonempty[0] + 1 :]
        lines = rest
    body = "\n".join(lines)
    return ParsedPrompt(header=tuple(header), units=tuple(_units(body)))


def _units(body: str) -> list[Unit]:
    units: list[Unit] = []
    prose: list[str] = []
    in_sentence = False
    pieces = [p.strip() for p in _pieces(body)]
    pieces = [p for p in pieces if p]
    for i, piece in enumerate(pieces):
        if in_sentence or looks_prose(piece):
            prose.append(piece)
            in_sentence = piece[-1] not in _TERMINATORS
            continue
        if prose:
            units.append(Unit("prose", _join_prose(prose)))
            prose = []
        nxt = pieces[i + 1] if i + 1 < len(pieces) else ""
        # "tag. A sentence": the full stop separates the tags from the prose; it is not in the tag.
        if piece[-1] == "." and nxt and looks_prose(nxt) and len(piece) > 1:
            piece = piece[:-1].rstrip()
        units.append(Unit("tag", piece))
    if prose:
        units.append(Unit("prose", _join_prose(prose)))
    return units


def _join_prose(pieces: list[str]) -> str:
    """Rejoin the pieces of one prose block: commas inside a sentence, spaces between sentences."""
    out = pieces[0]
    for prev, piece in zip(pieces, pieces[1:], strict=False):
        out += (" " if prev[-1] in _TERMINATORS else ", ") + piece
    return out


def unparse(header: tuple[str, ...] | list[str], tags: list[str], prose: list[str]) -> str:
    """Header lines, then ``tag, tag, ...``, then the prose blocks (``. `` before a capital)."""
    body = ", ".join(tags)
    if prose:
        text = " ".join(prose)
        if body:
            # `parse` takes one "." off a tag that precedes prose; ". " keeps a tag's own dot.
            sentence = text[0].isupper() or tags[-1].endswith(".")
            body += (". " if sentence else ", ") + text
        else:
            body = text
    return "\n".join([*header, body]) if header else body
