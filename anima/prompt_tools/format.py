"""`format_prompt`: the prompt with every automatic lint fix applied (idempotent), and tag insertion.

Formatting reorders tags into the card's section order, normalises their spelling (lowercase,
spaces, ``score_N``, escaped qualifiers, ``@`` for indexed artists), moves a dataset tag to line 1,
drops exact duplicates and empty tags, and keeps natural-language sentences verbatim after the tags.
It never drops or invents a tag: the only removals are repeats of a tag that stays.
"""

from __future__ import annotations

from anima.prompt_tools.artist_index import ArtistIndex
from anima.prompt_tools.lint import analyze
from anima.prompt_tools.parse import parse, split_top_level, split_wrapper, unparse
from anima.prompt_tools.rules import fix_case, fix_underscores, fix_whitespace
from anima.prompt_tools.sections import Section, TagVocabulary, classify


def format_prompt(
    prompt: str, *, artists: ArtistIndex | None = None, vocab: TagVocabulary | None = None
) -> str:
    """The prompt with the automatic fixes applied. Idempotent: formatting twice changes nothing."""
    return analyze(prompt, artists=artists, vocab=vocab).formatted


def insert_tag(prompt: str, tag: str, section: Section = Section.ARTIST) -> str:
    """Put `tag` where `section` starts in the recommended order, leaving every other tag in place.

    Used by the style explorer: ``insert_tag("1girl, smile", "@wlop")`` -> ``"1girl, @wlop, smile"``.
    A ``{artist}`` placeholder, when present, is replaced instead.
    """
    if "{artist}" in prompt:
        return prompt.replace("{artist}", tag)
    parsed = parse(prompt)
    tags = list(parsed.tags)
    keys = [_key(t) for t in tags]
    sections = classify(keys)
    pos = next((i for i, s in enumerate(sections) if s > section), len(tags))
    tags.insert(pos, tag)
    return unparse(parsed.header, tags, parsed.prose)


def _key(raw: str) -> str:
    _, inner, _ = split_wrapper(raw)
    first = next((s for s in split_top_level(inner, ",") if s.strip()), "")
    return fix_underscores(fix_case(fix_whitespace(first)))
