"""Which section of the recommended tag order a tag belongs to (anima-usage.md, "Tag order").

The card's order is ``[quality/meta/year/safety] [1girl/1boy/1other...] [character] [series]
[artist] [general tags]``, order within a section being free. Quality, meta, year, safety and count
tags come from small fixed vocabularies; artists carry ``@`` (or are found in a loaded index).
Characters and series cannot be told from general tags without the Danbooru database, so:

- a tag with a ``\\(qualifier\\)`` that is not a general-tag qualifier (``star (symbol)``) is a
  character, and user-supplied character/series lists are honoured;
- common general tags are recognised by vocabulary and word patterns (``... hair``, ``... eyes``);
- any other tag is *unknown*: before the first artist or recognised general tag it is kept with the
  characters and series, after it with the general tags. Sorting never moves an unknown tag across
  that boundary, so classifying the sorted prompt again gives the same sections (idempotence).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import IntEnum


class Section(IntEnum):
    """Sections in the recommended order; the value is the sort key."""

    META = 0  # quality, meta, year and safety tags ("order within a section is arbitrary")
    COUNT = 1
    CHARACTER = 2
    SERIES = 3
    ARTIST = 4
    GENERAL = 5


QUALITY_TAGS = frozenset(
    {"masterpiece", "best quality", "good quality", "normal quality", "low quality", "worst quality"}
)
SCORE_TAG = re.compile(r"^score_[1-9]$")
META_TAGS = frozenset(
    {"highres", "absurdres", "anime screenshot", "jpeg artifacts", "official art", "lowres"}
)
PERIOD_TAGS = ("newest", "recent", "mid", "early", "old")
YEAR_TAG = re.compile(r"^year (19|20)\d\d$")
SAFETY_TAGS = ("safe", "sensitive", "nsfw", "explicit")
COUNT_TAG = re.compile(r"^(\d+\+?|multiple) ?(girls?|boys?|others?)$|^no humans$")

# Qualifiers that mark general tags, not characters: "star (symbol)", "bow (weapon)", ...
GENERAL_QUALIFIERS = frozenset(
    {"symbol", "weapon", "food", "object", "animal", "flower", "plant", "clothing", "medium", "meme",
     "container", "hair", "instrument", "vehicle", "architecture", "cosplay", "emblem", "artwork",
     "pattern", "shape", "organ", "mythology", "creature", "projectile", "hairstyle", "style"}
)  # fmt: skip

# Common general tags; single words first, then multi-word tags.
_GENERAL_VOCAB = frozenset(
    {
        *"""solo smile blush ahoge twintails ponytail braid jewelry earrings necklace choker bow ribbon
        hairband hat gloves thighhighs pantyhose boots shoes barefoot dress skirt shirt jacket coat
        sweater hoodie uniform serafuku kimono swimsuit bikini armor cape scarf apron glasses holding
        weapon sword gun umbrella book cup flower flowers tree trees grass water beach ocean city street
        building window rain snow sunset sunlight reflection shadow profile wind teeth tongue fang tail
        wings horns halo breasts cleavage collarbone navel midriff chibi monochrome greyscale sketch
        lineart watercolor realistic scenery landscape pov fisheye bokeh crying tears angry
        expressionless sleeping eating drinking running walking jumping dancing singing music guitar
        microphone stage food fruit cake sweets tea coffee bag backpack phone smartphone frills lace
        necktie bowtie belt shorts pants jeans socks kneehighs headphones mask eyepatch bandages tattoo
        makeup lipstick mole freckles sweat wet sitting standing lying kneeling outdoors indoors day
        night sky cloud clouds bangs sidelocks portrait v miniskirt sleeveless""".split(),
        "looking at viewer",
        "open mouth",
        "closed mouth",
        "closed eyes",
        "one eye closed",
        "upper body",
        "cowboy shot",
        "full body",
        "simple background",
        "white background",
        "blurry background",
        "depth of field",
        "hair ornament",
        "school uniform",
        "light particles",
        "from above",
        "from below",
        "from side",
        "from behind",
        "dutch angle",
        "close-up",
        "floating hair",
        "animal ears",
        "cat ears",
        "fox ears",
        "large breasts",
        "medium breasts",
        "small breasts",
        "hand up",
        "arms up",
        "arms behind back",
        "hands on hips",
        "peace sign",
        "outstretched arm",
        "multiple views",
        "traditional media",
        "lens flare",
        "looking back",
        "looking away",
        "head tilt",
        "long sleeves",
        "short sleeves",
        "detached sleeves",
        "wide sleeves",
        "pleated skirt",
        "collared shirt",
        "sailor collar",
        "nail polish",
        "holding sword",
        "holding umbrella",
        "holding weapon",
        "holding cup",
        "holding book",
        "black background",
        "gradient background",
        "night sky",
        "starry sky",
        "blue sky",
        "cherry blossoms",
        "petals",
        "hair flower",
    }
)
_GENERAL_PATTERN = re.compile(
    r"(^| )(hair|eyes|skin|ears|tail|sleeves|dress|skirt|shirt|jacket|coat|gloves|thighhighs|"
    r"legwear|boots|shoes|hat|ribbon|bow|background|sky|uniform|swimsuit|bikini|kimono|pupils|"
    r"lips|nails|breasts|headwear|footwear|bodysuit|leotard|costume|outfit)$"
    r"|^(holding|looking|hand on|hands on|arms|from|wearing|open|closed|multicolored|two-tone|"
    r"gradient|see-through|off-shoulder) "
)
_QUALIFIER = re.compile(r"\s\\?\(([^()\\]+)\\?\)$")


@dataclass(frozen=True)
class TagVocabulary:
    """Extra knowledge for classification: normalised character and series names (optional)."""

    characters: frozenset[str] = field(default_factory=frozenset)
    series: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, characters: Collection[str] = (), series: Collection[str] = ()) -> TagVocabulary:
        return cls(frozenset(characters), frozenset(series))


def known_section(tag: str, vocab: TagVocabulary | None = None, is_artist=None) -> Section | None:
    """The section of one normalised tag (lowercase, spaces), or None when it cannot be told.

    `is_artist(name)` answers whether a bare name is in a loaded artist index.
    """
    t = tag.strip()
    if t.startswith("@"):
        return Section.ARTIST
    if t in QUALITY_TAGS or SCORE_TAG.match(t) or t in META_TAGS or t in PERIOD_TAGS or YEAR_TAG.match(t):
        return Section.META
    if t in SAFETY_TAGS:
        return Section.META
    if COUNT_TAG.match(t):
        return Section.COUNT
    if vocab is not None:
        if t in vocab.characters:
            return Section.CHARACTER
        if t in vocab.series:
            return Section.SERIES
    if is_general(t):
        return Section.GENERAL
    q = _QUALIFIER.search(t)
    if q:
        return Section.GENERAL if q.group(1).strip() in GENERAL_QUALIFIERS else Section.CHARACTER
    if is_artist is not None and is_artist(t):
        return Section.ARTIST
    return None


def is_general(tag: str) -> bool:
    """Whether `tag` is a recognisably general (descriptive) Danbooru tag."""
    return tag in _GENERAL_VOCAB or bool(_GENERAL_PATTERN.search(tag))


def classify(tags: list[str], vocab: TagVocabulary | None = None, is_artist=None) -> list[Section]:
    """Sections for a list of normalised tags, resolving unknown tags by position (module docstring)."""
    known = [known_section(t, vocab, is_artist) for t in tags]
    out: list[Section] = []
    seen_late = False
    for sec in known:
        if sec is None:
            out.append(Section.GENERAL if seen_late else Section.CHARACTER)
        else:
            out.append(sec)
            seen_late = seen_late or sec >= Section.ARTIST
    return out


def order_tags(tags: list[str], sections: list[Section]) -> list[str]:
    """Stable sort by section: order inside a section is the user's."""
    return [t for _, _, t in sorted(zip(sections, range(len(tags)), tags, strict=True))]
