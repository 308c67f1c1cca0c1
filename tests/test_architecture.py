"""The package layering, enforced as prefix rules: what each part of `anima` may import.

Read it as the architecture in one table: the model code knows only itself, sampling knows no
model, the recipe is plain data, weights and runtime sit under the pipeline, and the front ends
(cli, server) sit on top where nothing imports them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "anima"

_BELOW_PIPELINE = (
    "anima.model", "anima.sampling", "anima.text", "anima.recipe", "anima.prompt_tools", "anima.weights",
    "anima.runtime", "anima.lora", "anima.imageio", "anima.workflows", "anima.interop",
)  # fmt: skip
# package prefix -> the prefixes its modules may import (besides themselves, anima.errors and `anima`).
RULES: dict[str, tuple[str, ...]] = {
    "anima.errors": (),
    "anima.model": (),
    "anima.sampling": (),
    "anima.recipe": ("anima.sampling.names",),
    "anima.text": ("anima.model",),
    "anima.prompt_tools": ("anima.text.prompt_weights",),
    "anima.weights": ("anima.model",),
    "anima.runtime": ("anima.model", "anima.weights"),
    "anima.lora": ("anima.model", "anima.weights", "anima.runtime"),
    "anima.interop": ("anima.recipe", "anima.sampling.names"),
    "anima.imageio": ("anima.recipe", "anima.interop"),
    "anima.workflows": ("anima.recipe", "anima.sampling", "anima.model", "anima.text", "anima.runtime",
                        "anima.imageio"),
    "anima.pipeline": _BELOW_PIPELINE,
    "anima.jobs": (*_BELOW_PIPELINE, "anima.pipeline"),
    "anima.explore": (*_BELOW_PIPELINE, "anima.pipeline", "anima.jobs"),
    "anima.train": (*_BELOW_PIPELINE, "anima.pipeline"),
    "anima.demo": (*_BELOW_PIPELINE, "anima.pipeline", "anima.train", "anima.jobs"),
    "anima.server": (*_BELOW_PIPELINE, "anima.pipeline", "anima.jobs", "anima.demo"),
    "anima.cli": ("anima",),
    "anima.__main__": ("anima.cli",),
}  # fmt: skip


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return {m for m in out if m == "anima" or m.startswith("anima.")}


MODULES = {_module_name(p): _imports(p) for p in PKG.rglob("*.py")}


def _rule(module: str) -> tuple[str, tuple[str, ...]]:
    owners = [p for p in RULES if module == p or module.startswith(p + ".")]
    assert owners, f"{module} is in no layer of RULES: add its package"
    owner = max(owners, key=len)
    return owner, RULES[owner]


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_every_module_keeps_to_its_layer() -> None:
    problems = []
    for mod, imps in sorted(MODULES.items()):
        if mod == "anima":
            continue
        owner, allowed = _rule(mod)
        for imp in sorted(imps):
            if imp in ("anima", "anima.errors") or _under(imp, (owner, *allowed)):
                continue
            problems.append(f"{mod} imports {imp}")
    assert not problems, "\n".join(problems)


def test_nothing_imports_the_front_ends() -> None:
    for mod, imps in MODULES.items():
        if _under(mod, ("anima.cli", "anima.__main__")):
            continue
        bad = {i for i in imps if _under(i, ("anima.cli", "anima.__main__"))}
        assert not bad, f"{mod} imports front end {bad}"
        if not _under(mod, ("anima.server",)):
            assert not {i for i in imps if _under(i, ("anima.server",))}, f"{mod} imports the server"


def test_import_is_light() -> None:
    code = (
        "import sys, anima, anima.cli, anima.recipe; "
        "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
