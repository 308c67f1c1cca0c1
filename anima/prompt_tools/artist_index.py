"""A user-supplied list of artist names: loading, normalising, near matches and prefix completion.

Accepted files (UTF-8):

- one name per line (``#`` comments and blank lines skipped), with or without ``@``;
- the community style explorer's index (``Anima2B_Artist_Index_59k.txt``): a prose header, then
  after the ``ARTIST LIST STARTS BELOW:`` banner one ``@name`` per line, most-trained first, with
  ComfyUI-escaped parentheses (``@hammer \\(sunset beach\\)``);
- a tag-autocomplete CSV (``name,category,count,...``), of which category-1 (artist) rows are kept.

Names are normalised the way the model card writes tags: lowercase, spaces for underscores, single
spaces, no ``@``, no escapes. File order is kept as the rank (the 59k index is sorted by frequency).
"""

from __future__ import annotations

import bisect
import difflib
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from anima.errors import AnimaError

_BANNER = "ARTIST LIST STARTS BELOW"
_CSV_ROW = re.compile(r"^([^,]+),(\d+),(\d+)(,.*)?$")


def normalize_name(name: str) -> str:
    """``@Hammer_\\(Sunset Beach\\)`` -> ``hammer (sunset beach)``."""
    s = name.strip()
    s = s.lstrip("@").strip()
    s = s.replace("\\(", "(").replace("\\)", ")").replace("_", " ")
    return " ".join(s.lower().split())


def prompt_tag(name: str) -> str:
    """The tag to write in a prompt: ``@`` + name with ComfyUI-escaped parentheses."""
    n = normalize_name(name)
    return "@" + n.replace("(", "\\(").replace(")", "\\)")


class ArtistIndex:
    """Normalised artist names in rank order, with lookup, suggestions and completion."""

    def __init__(self, names: Iterable[str], source: str = "") -> None:
        seen: dict[str, int] = {}
        for raw in names:
            n = normalize_name(raw)
            if n and n not in seen:
                seen[n] = len(seen)
        self.source = source
        self.names: list[str] = list(seen)
        self._rank = seen
        self._sorted = sorted(seen)
        # word -> names containing a word starting there (for "kuvsh" -> "ilya kuvshinov").
        self._words = sorted((w, n) for n in self.names for w in n.split()[1:])
        self._grams: dict[str, list[int]] | None = None

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path) -> ArtistIndex:
        """Read any of the accepted formats (module docstring); AnimaError for a missing/empty file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise AnimaError(f"artist file {path} not found") from None
        except IsADirectoryError:
            raise AnimaError(f"artist file {path} is a folder, not a text file") from None
        except UnicodeDecodeError:
            raise AnimaError(f"artist file {path} is not UTF-8 text") from None
        except OSError as exc:
            raise AnimaError(f"cannot read artist file {path}: {exc.strerror}") from None
        index = cls(parse_artist_lines(text), source=str(path))
        if not index.names:
            raise AnimaError(f"artist file {path} holds no artist names")
        return index

    # ---------------------------------------------------------------- queries
    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize_name(name) in self._rank

    def rank(self, name: str) -> int | None:
        """0 for the first (most trained) name in the file."""
        return self._rank.get(normalize_name(name))

    def complete(self, prefix: str, limit: int = 20) -> list[str]:
        """Names starting with `prefix` (then names with a later word starting with it), by rank."""
        p = normalize_name(prefix)
        if not p:
            return self.names[:limit]
        lo = bisect.bisect_left(self._sorted, p)
        hi = bisect.bisect_left(self._sorted, p + "\U0010ffff")
        first = sorted(self._sorted[lo:hi], key=self._rank.__getitem__)
        if len(first) >= limit:
            return first[:limit]
        lo = bisect.bisect_left(self._words, (p,))
        hi = bisect.bisect_left(self._words, (p + "\U0010ffff",))
        taken = set(first)
        later = sorted({n for _, n in self._words[lo:hi]} - taken, key=self._rank.__getitem__)
        return (first + later)[:limit]

    def suggest(self, name: str, limit: int = 3, cutoff: float = 0.75) -> list[str]:
        """Near matches for a misspelt name (best first); [] when nothing is close."""
        n = normalize_name(name)
        if not n:
            return []
        candidates = self._candidates(n)
        scored = []
        for c in candidates:
            sm = difflib.SequenceMatcher(None, n, c)
            if sm.real_quick_ratio() >= cutoff and sm.quick_ratio() >= cutoff:
                r = sm.ratio()
                if r >= cutoff:
                    scored.append((-r, self._rank[c], c))
        return [c for _, _, c in sorted(scored)[:limit]]

    def _candidates(self, n: str) -> list[str]:
        """Names sharing at least a third of `n`'s trigrams (an index keeps 59k names fast)."""
        if self._grams is None:
            grams: dict[str, list[int]] = defaultdict(list)
            for i, name in enumerate(self.names):
                for g in _trigrams(name):
                    grams[g].append(i)
            self._grams = dict(grams)
        mine = _trigrams(n)
        counts: dict[int, int] = defaultdict(int)
        for g in mine:
            for i in self._grams.get(g, ()):
                counts[i] += 1
        need = max(1, len(mine) // 3)
        return [self.names[i] for i, c in counts.items() if c >= need]


def _trigrams(s: str) -> set[str]:
    padded = f"  {s} "
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


def parse_artist_lines(text: str) -> list[str]:
    """The names in an artist file's text, in file order (see the module docstring for formats)."""
    lines = text.splitlines()
    banner = next((i for i, ln in enumerate(lines) if _BANNER in ln.upper()), None)
    if banner is not None:
        start = banner + 1
        # The banner sits between two rules of "=" characters.
        while start < len(lines) and (not lines[start].strip() or set(lines[start].strip()) == {"="}):
            start += 1
        lines = lines[start:]
    names: list[str] = []
    for line in lines:
        s = line.strip()
        if not s or s.startswith("#") or set(s) <= set("=-"):
            continue
        m = _CSV_ROW.match(s)
        if m:
            if m.group(2) == "1":  # tag-autocomplete category 1 = artist
                names.append(m.group(1))
            continue
        names.append(s)
    return names
