"""Quality presets (the card's positive prefix and negative prompt), year and rating helpers.

``--quality default`` prepends the card's positive prefix (``masterpiece, best quality, score_7,
safe``) and uses its negative prompt; ``none`` leaves both prompts alone; ``custom`` takes the
prefix and negative from the caller. Tags already present are not added twice, and a dataset
header (``ye-pop`` / ``deviantart`` on line 1) stays on line 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from anima.errors import AnimaError
from anima.prompt_tools.parse import parse, split_top_level
from anima.prompt_tools.rules import fix_rating
from anima.prompt_tools.sections import PERIOD_TAGS, SAFETY_TAGS

CARD_POSITIVE_PREFIX = "masterpiece, best quality, score_7, safe"
CARD_NEGATIVE = "worst quality, low quality, score_1, score_2, score_3, artist name"
QUALITY_CHOICES = ("default", "none", "custom")

# Period tags by year. The card names the five periods but not their years; these are the ranges
# of the Danbooru-trained anime models the tags come from (NoobAI/Illustrious convention).
_PERIODS = ((2021, "newest"), (2018, "recent"), (2014, "mid"), (2011, "early"), (0, "old"))


@dataclass(frozen=True)
class QualityPreset:
    name: str
    positive_prefix: str
    negative: str


def quality_preset(
    name: str, positive_prefix: str | None = None, negative: str | None = None
) -> QualityPreset:
    """`default`, `none`, or `custom` (which needs `positive_prefix` and/or `negative`)."""
    if name == "default":
        return QualityPreset("default", CARD_POSITIVE_PREFIX, CARD_NEGATIVE)
    if name == "none":
        return QualityPreset("none", "", "")
    if name == "custom":
        if positive_prefix is None and negative is None:
            raise AnimaError(
                "a custom quality preset needs a prefix and/or a negative prompt", setting="quality"
            )
        return QualityPreset("custom", positive_prefix or "", negative or "")
    raise AnimaError(f"unknown quality preset {name!r}; choose from: {', '.join(QUALITY_CHOICES)}")


def _tags(text: str) -> list[str]:
    return [t.strip() for t in split_top_level(text, ",\n") if t.strip()]


def _merge(prefix: str, text: str) -> str:
    """`prefix` tags not already in `text`, then `text` (after its dataset header, if any)."""
    parsed = parse(text)
    present = {t.strip().lower() for t in parsed.tags}
    add = [t for t in _tags(prefix) if t.lower() not in present]
    header_lines = len(parsed.header)
    lines = text.split("\n")
    head, body = lines[:header_lines], "\n".join(lines[header_lines:])
    if not add:
        return text
    body = ", ".join(add) + (", " + body.lstrip() if body.strip() else "")
    return "\n".join([*head, body])


def apply_quality(prompt: str, negative: str | None, preset: QualityPreset) -> tuple[str, str | None]:
    """(prompt with the preset's prefix, negative). A user negative keeps its tags and gains the
    preset's missing ones in front; with no user negative the preset's is used (None for `none`)."""
    if preset.name == "none":
        return prompt, negative
    new_prompt = _merge(preset.positive_prefix, prompt) if preset.positive_prefix else prompt
    if not preset.negative:
        return new_prompt, negative
    if negative is None or not negative.strip():
        return new_prompt, preset.negative
    return new_prompt, _merge(preset.negative, negative)


# --------------------------------------------------------------------- year and rating
def year_tag(year: int) -> str:
    """``year 2024``."""
    if not isinstance(year, int) or not 1900 <= year <= 2099:
        raise AnimaError(f"year must be a four-digit year, got {year!r}")
    return f"year {year}"


def period_tag(year: int) -> str:
    """The period tag for a year: newest, recent, mid, early or old (see `_PERIODS`)."""
    year_tag(year)
    return next(tag for start, tag in _PERIODS if year >= start)


def rating_tag(rating: str) -> str:
    """Danbooru ratings and Anima names -> Anima's safety tag: ``questionable`` -> ``nsfw`` etc."""
    r = rating.strip().lower()
    tag = fix_rating(r) if r not in SAFETY_TAGS else r
    if tag not in SAFETY_TAGS:
        tag = fix_rating("rating:" + r)
    if tag not in SAFETY_TAGS:
        raise AnimaError(f"unknown rating {rating!r}; use one of: {', '.join(SAFETY_TAGS)} (or g/s/q/e)")
    return tag


def rating_negative(rating: str) -> str:
    """Safety tags to put in the negative prompt to keep an image at `rating` (``safe`` -> the rest)."""
    tag = rating_tag(rating)
    return ", ".join(SAFETY_TAGS[SAFETY_TAGS.index(tag) + 1 :])


__all__ = [
    "CARD_NEGATIVE", "CARD_POSITIVE_PREFIX", "PERIOD_TAGS", "QUALITY_CHOICES", "QualityPreset",
    "apply_quality", "period_tag", "quality_preset", "rating_negative", "rating_tag", "year_tag",
]  # fmt: skip
