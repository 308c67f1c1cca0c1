"""`lint(prompt)`: the model card's prompt conventions as coded issues, and the fixed prompt.

One pass (`analyze`) both finds the issues and builds the fixed text, so `format` applies exactly the
fixes `lint` reports (those of rules with ``auto=True``; see `anima.prompt_tools.rules`). No torch:
the T5 token count is a callable the caller may pass (the CLI passes the real tokenizer's).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass

from anima.prompt_tools import rules as R
from anima.prompt_tools.artist_index import ArtistIndex
from anima.prompt_tools.parse import (
    dataset_tag,
    is_balanced,
    parse,
    split_top_level,
    split_wrapper,
    unparse,
)
from anima.prompt_tools.sections import Section, TagVocabulary, classify, known_section, order_tags
from anima.text.prompt_weights import parse_prompt_weights

WEIGHT_WEAK = 15.0  # wiki: "works up to about 15x"
WEIGHT_BROKEN = 70.0  # wiki: "beyond about 70x it breaks completely"
T5_TOKEN_LIMIT = 512


@dataclass(frozen=True)
class Issue:
    """One finding. `tag` is the text concerned; `replacement` what an automatic fix writes."""

    code: str
    severity: str
    message: str
    fix: str
    auto: bool
    tag: str = ""
    replacement: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.code} {self.severity}: {self.message} (fix: {self.fix})"


@dataclass(frozen=True)
class Analysis:
    issues: tuple[Issue, ...]
    formatted: str


def _issue(code: str, message: str, tag: str = "", replacement: str | None = None, auto=None) -> Issue:
    rule = R.RULES[code]
    return Issue(
        code=code, severity=rule.severity, message=message, fix=rule.fix,
        auto=rule.auto if auto is None else auto, tag=tag, replacement=replacement,
    )  # fmt: skip


def _fix_tag(tag: str, issues: list[Issue]) -> str:
    for code, rule in R.TAG_RULES:
        new = rule(tag)
        if new != tag:
            issues.append(_issue(code, f"{R.RULES[code].title}: '{tag}' -> '{new}'", tag, new))
            tag = new
    return tag


def _fix_unit(raw: str, issues: list[Issue], artists: ArtistIndex | None) -> tuple[str, str]:
    """(fixed unit text, normalised first tag for classification)."""
    opens, inner, closes = split_wrapper(raw)
    subs = []
    for sub in split_top_level(inner, ","):
        if not sub.strip():
            continue
        fixed = _fix_tag(sub.strip(), issues)
        if artists is not None and not fixed.startswith("@") and _is_bare_artist(fixed, artists):
            new = "@" + fixed
            issues.append(
                _issue("A001", f"'{fixed}' is an artist in {_src(artists)}; write '{new}'", fixed, new)
            )
            fixed = new
        subs.append(fixed)
    key = subs[0] if subs else ""
    return opens + ", ".join(subs) + closes, key


def _is_bare_artist(tag: str, artists: ArtistIndex) -> bool:
    # A tag that is also a quality/count/general word ("lack", "shimmer") stays a tag.
    return tag in artists and known_section(tag) in (None, Section.CHARACTER)


def _src(artists: ArtistIndex) -> str:
    return artists.source or "the artist index"


def analyze(
    prompt: str,
    *,
    artists: ArtistIndex | None = None,
    vocab: TagVocabulary | None = None,
    t5_count: Callable[[str], int] | None = None,
) -> Analysis:
    """Find every issue in `prompt` and build the prompt with the automatic fixes applied."""
    issues: list[Issue] = []
    parsed = parse(prompt)
    header = list(parsed.header)
    if header and header[0] != dataset_tag(header[0]):
        canon = dataset_tag(header[0])
        issues.append(_issue("D002", f"dataset tag '{header[0]}' -> '{canon}'", header[0], canon))
        header[0] = canon
    if re.search(r",\s*,|^\s*,|,\s*$", prompt, flags=re.MULTILINE):
        issues.append(_issue("F003", "empty tag between commas or a trailing comma"))

    balanced = is_balanced(prompt)
    tags: list[str] = []
    keys: list[str] = []
    for raw in parsed.tags:
        fixed, key = _fix_unit(raw, issues, artists)
        if not key:
            continue
        ds = dataset_tag(fixed) if fixed == key else None
        if ds is not None:
            if not header:
                issues.append(_issue("D001", f"'{raw}' belongs alone on line 1", raw, ds))
                header = [ds]
                continue
            # (Kept when it is all the body a titled prompt has: a title needs a line after it.)
            if header[0] == ds and not (len(header) == 2 and len(parsed.tags) + len(parsed.prose) == 1):
                issues.append(_issue("U001", f"'{raw}' repeats the dataset tag of line 1", raw))
                continue
            issues.append(_issue("D001", f"a second dataset tag '{raw}' (line 1 has '{header[0]}')",
                                 raw, auto=False))  # fmt: skip
        if fixed in tags and balanced:
            issues.append(_issue("U001", f"'{fixed}' appears more than once", fixed))
            continue
        tags.append(fixed)
        keys.append(key)

    is_artist = artists.__contains__ if artists is not None else None
    sections = classify(keys, vocab, is_artist)
    # With an unclosed "(" the units are not the user's tags: fix spelling, never reorder (P001).
    ordered = order_tags(tags, sections) if balanced else tags
    if ordered != tags:
        first = next(i for i, (a, b) in enumerate(zip(tags, ordered, strict=True)) if a != b)
        issues.append(_issue("O001", f"'{ordered[first]}' should come before '{tags[first]}'"))
    formatted = unparse(header, ordered, parsed.prose)

    issues += _advice(prompt, parsed.prose, keys, sections, artists, t5_count)
    return Analysis(issues=tuple(issues), formatted=formatted)


def _advice(prompt, prose, keys, sections, artists, t5_count) -> list[Issue]:
    """The checks that have no automatic fix."""
    out: list[Issue] = []
    for text, weight in parse_prompt_weights(prompt):
        if weight > WEIGHT_WEAK and text.strip(" ,"):
            code = "W002" if weight > WEIGHT_BROKEN else "W001"
            out.append(_issue(code, f"'{text.strip(' ,')}' has weight {weight:g}", text.strip(" ,")))
    if not is_balanced(prompt):
        out.append(_issue("P001", "a '(' or '[' is never closed, or a ')' or ']' closes nothing"))
    if artists is not None:
        for key in keys:
            if key.startswith("@") and key not in artists:
                close = artists.suggest(key)
                hint = f"; did you mean '@{close[0]}'?" if close else ""
                out.append(_issue("A002", f"'{key}' is not in {_src(artists)}{hint}", key,
                                  "@" + close[0] if close else None))  # fmt: skip
    safety = sorted({k for k in keys if k in ("safe", "sensitive", "nsfw", "explicit")})
    if len(safety) > 1:
        out.append(_issue("S001", f"conflicting safety tags: {', '.join(safety)}"))
    content = [k for k, s in zip(keys, sections, strict=True) if s not in (Section.META, Section.ARTIST)]
    if prose and not content:
        n = count_sentences(" ".join(prose))
        if n < 2:
            out.append(_issue("N001", f"the natural-language part has {n} sentence{'s' if n != 1 else ''}"))
    if t5_count is not None:
        n = t5_count(prompt)
        if n > T5_TOKEN_LIMIT:
            out.append(_issue("L001", f"the prompt is {n} T5 tokens (limit {T5_TOKEN_LIMIT})"))
    return out


def count_sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if re.search(r"\w", s)])


def lint(prompt: str, **kwargs) -> list[Issue]:
    """All issues of `prompt` (see `analyze` for the keyword arguments)."""
    return list(analyze(prompt, **kwargs).issues)


def tag_counts(prompt: str) -> Counter:
    """Tags of a prompt as written (weights unwrapped, dataset header included), with their counts."""
    parsed = parse(prompt)
    out: Counter = Counter(parsed.header[:1])
    for raw in parsed.tags:
        _, inner, _ = split_wrapper(raw)
        for sub in split_top_level(inner, ","):
            if sub.strip():
                out[sub.strip()] += 1
    return out
