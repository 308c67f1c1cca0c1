"""A user's tag list in the a1111-sd-webui-tagcomplete CSV format, for prompt completion.

Each line is ``name,type,post_count,"alias1,alias2"`` (danbooru.csv and its kin; the type and
count columns may be missing). Completion matches a prefix of the tag or of one of its aliases
and ranks by post count, as tagcomplete does; tags are returned in prompt form (underscores as
spaces, parentheses escaped), the form Anima's captions use.
"""

from __future__ import annotations

import bisect
import csv
import io
from dataclasses import dataclass
from pathlib import Path

from anima.errors import AnimaError


@dataclass(frozen=True)
class Tag:
    name: str  # as the CSV writes it (underscores)
    category: int
    count: int

    @property
    def prompt_form(self) -> str:
        return self.name.replace("_", " ").replace("(", "\\(").replace(")", "\\)")


class TagList:
    """Tags with their aliases, searchable by prefix."""

    def __init__(self, tags: list[Tag], aliases: dict[str, str], source: str = "") -> None:
        self.source = source
        self._tags = {t.name: t for t in tags}
        keys = {t.name: t.name for t in tags} | aliases  # lookup key -> tag name
        self._keys = sorted(keys.items())

    @classmethod
    def load(cls, path: str | Path) -> TagList:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise AnimaError(f"tag file {path} not found", setting="tags") from None
        except (IsADirectoryError, UnicodeDecodeError) as exc:
            what = type(exc).__name__
            raise AnimaError(f"tag file {path} is not a UTF-8 text file ({what})", setting="tags") from None
        tags: list[Tag] = []
        aliases: dict[str, str] = {}
        for row in csv.reader(io.StringIO(text)):
            if not row or not row[0].strip() or row[0].startswith("#"):
                continue
            name = row[0].strip().lower().replace(" ", "_")
            category = _int(row[1]) if len(row) > 1 else 0
            count = _int(row[2]) if len(row) > 2 else 0
            tags.append(Tag(name, category, count))
            for alias in (row[3].split(",") if len(row) > 3 else ()):
                a = alias.strip().lower().replace(" ", "_")
                if a:
                    aliases.setdefault(a, name)
        if not tags:
            raise AnimaError(f"tag file {path} holds no tags", setting="tags")
        return cls(tags, aliases, str(path))

    def __len__(self) -> int:
        return len(self._tags)

    def complete(self, prefix: str, limit: int = 20) -> list[Tag]:
        """Tags whose name or an alias starts with `prefix`, most used first."""
        p = prefix.strip().lower().replace(" ", "_")
        if not p:
            return []
        lo = bisect.bisect_left(self._keys, (p,))
        hi = bisect.bisect_left(self._keys, (p + "\U0010ffff",))
        names = {name for _, name in self._keys[lo:hi]}
        found = sorted((self._tags[n] for n in names), key=lambda t: (-t.count, t.name))
        return found[:limit]


def _int(text: str) -> int:
    try:
        return int(text.strip() or 0)
    except ValueError:
        return 0
