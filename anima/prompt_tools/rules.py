"""The lint rules: code, severity, what is wrong, what the fix does, and the per-tag rewrites.

Each rule has a stable code (documented in `RULES`). Rules with ``auto=True`` are applied by
`anima prompt format`; the others are advice (a weight the user chose, a prompt that is too long)
because fixing them would change what the user asked for.

The tag rewrites are pure functions ``str -> str`` applied in `TAG_RULES` order; each one is
idempotent and none undoes another, so applying the whole chain twice changes nothing the second time.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    code: str
    severity: str  # "error", "warning" or "info"
    title: str
    fix: str
    auto: bool


RULES: dict[str, Rule] = {
    r.code: r
    for r in (
        Rule("F001", "warning", "tag has uppercase letters", "lowercase the tag", True),
        Rule("F002", "warning", "tag uses underscores", "use spaces, not underscores (score_N keeps its _)",
             True),
        Rule("F003", "info", "empty tag or stray separator", "remove empty tags and extra spaces", True),
        Rule("F004", "warning", "unescaped parentheses in a tag qualifier (read as weight 1.1)",
             "escape them as \\( \\)", True),
        Rule("F005", "warning", "space after @ in an artist tag", "remove the space", True),
        Rule("O001", "info", "tags are not in the recommended order",
             "reorder: quality/meta/year/safety, count, character, series, artist, general", True),
        Rule("U001", "info", "duplicate tag", "remove the repeated tag", True),
        Rule("A001", "warning", "artist name without @ (its effect is very weak)", "add @ before the name",
             True),
        Rule("A002", "warning", "@artist not in the loaded artist index", "use the suggested name", False),
        Rule("W001", "warning", "weight above 15 (the effect weakens beyond about 15)",
             "lower the weight to 15 or less", False),
        Rule("W002", "error", "weight above 70 (community tests: the image breaks)",
             "lower the weight to 15 or less", False),
        Rule("L001", "warning", "prompt longer than 512 T5 tokens", "shorten the prompt", False),
        Rule("N001", "info", "natural-language prompt under two sentences",
             "write at least two sentences (the card's advice)", False),
        Rule("D001", "warning", "dataset tag not alone on line 1", "move ye-pop / deviantart to line 1",
             True),
        Rule("D002", "warning", "misspelt dataset tag", "write ye-pop or deviantart", True),
        Rule("Q001", "warning", "score tag not written as score_N", "write score_1 ... score_9", True),
        Rule("Y001", "warning", "year tag not written as 'year NNNN'", "write year 2024 etc.", True),
        Rule("R001", "warning", "rating written the Danbooru way",
             "use safe, sensitive, nsfw or explicit", True),
        Rule("S001", "warning", "more than one safety tag in the prompt",
             "keep one of safe/sensitive/nsfw/explicit",
             False),
        Rule("P001", "warning", "unbalanced parentheses or brackets (tags are not reordered)",
             "close the parenthesis or escape it as \\( \\)", False),
    )
}  # fmt: skip


# --------------------------------------------------------------------- tag rewrites
def fix_whitespace(tag: str) -> str:
    return " ".join(tag.split())


def fix_at_space(tag: str) -> str:
    return "@" + tag[1:].lstrip() if tag.startswith("@") and tag[1:2].isspace() else tag


def fix_case(tag: str) -> str:
    return tag.lower()


_SCORE_KEEP = re.compile(r"^score_[1-9]$")


def fix_underscores(tag: str) -> str:
    if _SCORE_KEEP.match(tag) or (len(tag) == 3 and tag[1] == "_") or "_" not in tag:
        return tag  # score_N stays; "o_o", "^_^" and similar emoticon tags contain their "_"
    return " ".join(tag.replace("_", " ").split())


_SCORE = re.compile(r"^score[ _-]?([1-9])(?:[ _-]?up)?$")


def fix_score(tag: str) -> str:
    m = _SCORE.match(tag)
    return f"score_{m.group(1)}" if m else tag


_RATING = re.compile(r"^rating[:_ ]?\s*(\w+)$")
_RATINGS = {
    "general": "safe", "g": "safe", "safe": "safe", "s": "sensitive", "sensitive": "sensitive",
    "questionable": "nsfw", "q": "nsfw", "nsfw": "nsfw", "explicit": "explicit", "e": "explicit",
}  # fmt: skip


def fix_rating(tag: str) -> str:
    if tag == "questionable":
        return "nsfw"
    m = _RATING.match(tag)
    return _RATINGS.get(m.group(1), tag) if m else tag


_YEAR = re.compile(r"^(?:year)?((?:19|20)\d\d)$")


def fix_year(tag: str) -> str:
    m = _YEAR.match(tag)
    return f"year {m.group(1)}" if m else tag


# "name (qualifier)" at the end of a tag, parentheses not escaped and not a weight.
_QUALIFIER = re.compile(r"^([^()]*\S)\s*\(([^():]+)\)$")


def fix_qualifier(tag: str) -> str:
    m = _QUALIFIER.match(tag)
    if not m or "\\" in m.group(1)[-1:]:
        return tag
    return f"{m.group(1)} \\({m.group(2).strip()}\\)"


TagRule = tuple[str, Callable[[str], str]]
# Order matters: case and underscores first, so that the vocabulary rules see normalised text.
TAG_RULES: tuple[TagRule, ...] = (
    ("F003", fix_whitespace),
    ("F005", fix_at_space),
    ("F001", fix_case),
    ("F002", fix_underscores),
    ("Q001", fix_score),
    ("R001", fix_rating),
    ("Y001", fix_year),
    ("F004", fix_qualifier),
)
