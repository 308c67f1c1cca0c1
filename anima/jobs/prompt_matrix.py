"""Prompt matrix (A1111): ``a|b|c`` -> one image for every combination of the optional parts.

The first part is always used; each later part is either in or out, giving 2^(n-1) prompts, each
the used parts joined with ", ". Only a ``|`` at the top level splits (an alternation ``[x|y]`` or
anything in parentheses stays whole). All cells keep the recipe's seed. The first half of the
optional parts varies along X, the rest along Y, so the result renders as a contact sheet through
`anima.jobs.grid.GridPlan`.
"""

from __future__ import annotations

from anima.errors import AnimaError
from anima.jobs.grid import MAX_CELLS, GridPlan
from anima.text.prompt_editing import split_top_level


def _combos(parts: list[str]) -> list[tuple[bool, ...]]:
    """All in/out choices, the first part toggling fastest (as binary counting from 0)."""
    return [tuple(bool(i >> j & 1) for j in range(len(parts))) for i in range(2 ** len(parts))]


def _label(parts: list[str], bits: tuple[bool, ...]) -> str:
    return " ".join(("+" if on else "-") + p for p, on in zip(parts, bits, strict=True)) or "base"


def plan_matrix(recipe) -> GridPlan:
    parts = [p.strip() for p in split_top_level(recipe.prompt, "|")]
    if len(parts) < 2:
        raise AnimaError(
            "a prompt matrix needs a prompt with parts separated by | (like 1girl|smile|hat)",
            setting="prompt_matrix",
        )
    base, optional = parts[0], parts[1:]
    if 2 ** len(optional) > MAX_CELLS:
        raise AnimaError(f"a prompt matrix of {len(optional)} optional parts has too many cells")
    xs, ys = optional[: (len(optional) + 1) // 2], optional[(len(optional) + 1) // 2 :]
    x_combos, y_combos = _combos(xs), _combos(ys) if ys else [()]
    cells = []
    for yb in y_combos:
        for xb in x_combos:
            used = [base] + [p for p, on in zip(xs + ys, xb + yb, strict=True) if on]
            prompt = ", ".join(p for p in used if p)
            cells.append(recipe.with_(prompt=prompt))
    return GridPlan(
        tuple(cells),
        tuple(_label(xs, b) for b in x_combos),
        tuple(_label(ys, b) for b in y_combos) if ys else (),
        (),
    )


def sheet_recipe(recipe):
    """The recipe written on the matrix sheet: the template prompt, marked as a matrix."""
    return recipe.with_(prompt_matrix=True)
