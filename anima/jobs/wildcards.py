"""Wildcards: ``__name__`` in a prompt becomes a random line of ``name.txt`` in a wildcards folder.

Names may contain sub-folders (``__hair/colour__`` -> ``hair/colour.txt``). Blank lines and lines
starting with ``#`` are skipped; a chosen line may itself hold wildcards (expanded up to 10 levels
deep). The choice is seeded by the recipe's seed (a private ``random.Random(seed)``, prompt first,
then the negative prompt), so the same seed picks the same lines.

The expanded text becomes the recipe's prompt and the template is recorded in `Recipe.origin`
(infotext ``Wildcard prompt``): a PNG reproduces without the wildcard files, and batches with
other seeds pick other lines.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from anima.errors import AnimaError

WILDCARD = re.compile(r"__([A-Za-z0-9][\w\-./ ]*?)__")
_MAX_DEPTH = 10


def has_wildcards(text: str) -> bool:
    return WILDCARD.search(text) is not None


def _lines(folder: Path, name: str) -> list[str]:
    path = (folder / f"{name}.txt").resolve()
    if folder.resolve() not in path.parents:
        raise AnimaError(f"wildcard __{name}__ points outside the wildcards folder")
    if not path.is_file():
        known = sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.txt"))
        hint = f"; available: {', '.join(known[:20])}" if known else " (the folder has no .txt files)"
        raise AnimaError(f"no wildcard file {name}.txt in {folder}{hint}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnimaError(f"cannot read wildcard file {path}: {exc}") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not lines:
        raise AnimaError(f"wildcard file {path} has no usable lines")
    return lines


def expand(text: str, folder: Path, rng: random.Random) -> str:
    """Replace every ``__name__`` (recursively) with a line chosen by `rng`."""
    for _ in range(_MAX_DEPTH):
        if not has_wildcards(text):
            return text
        text = WILDCARD.sub(lambda m: rng.choice(_lines(folder, m.group(1).strip())), text)
    if has_wildcards(text):
        raise AnimaError(f"wildcards nest more than {_MAX_DEPTH} levels deep (a file includes itself?)")
    return text


def expand_recipe(recipe, folder: Path | None):
    """The recipe with wildcards expanded from `folder`, seeded by its seed, templates recorded."""
    if not (has_wildcards(recipe.prompt) or has_wildcards(recipe.negative_prompt)):
        return recipe
    if folder is None:
        raise AnimaError(
            "the prompt has __wildcards__ but no wildcards folder was given", setting="wildcards_dir"
        )
    folder = Path(folder)
    if not folder.is_dir():
        raise AnimaError(f"wildcards folder {folder}: no such folder", setting="wildcards_dir")
    rng = random.Random(recipe.seed)
    prompt, negative = recipe.prompt, recipe.negative_prompt
    changes = {}
    if has_wildcards(prompt):
        changes["wildcard_prompt"] = " ".join(prompt.splitlines())
        prompt = expand(prompt, folder, rng)
    if has_wildcards(negative):
        changes["wildcard_negative_prompt"] = " ".join(negative.splitlines())
        negative = expand(negative, folder, rng)
    return recipe.with_(prompt=prompt, negative_prompt=negative, **changes)
