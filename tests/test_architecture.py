"""The import direction of design.md, enforced: leaves stay leaves, nothing imports the front ends."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "anima"

# Modules that must not depend on orchestration or front ends.
LEAVES = {
    "anima.config", "anima.errors", "anima.guidance", "anima.prompt_weights", "anima.latent",
    "anima.noise", "anima.schedules", "anima.safetensors_io", "anima.file_kinds", "anima.diffusers_keys",
}  # fmt: skip
FRONT_ENDS = ("anima.cli", "anima.__main__", "anima.server", "anima.train", "anima.generate_cli")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("anima")}


MODULES = {_module_name(p): _imports(p) for p in PKG.rglob("*.py")}


def test_model_code_imports_only_config_and_model() -> None:
    allowed = ("anima.model", "anima.config", "anima.errors", "anima.latent")
    for mod, imps in MODULES.items():
        if mod == "anima.model" or mod.startswith("anima.model."):
            bad = {i for i in imps if not i.startswith(allowed)}
            assert not bad, f"{mod} imports {bad}"


def test_leaves_do_not_import_orchestration() -> None:
    for mod in LEAVES & MODULES.keys():
        bad = {i for i in MODULES[mod] if i.startswith(("anima.pipeline", "anima.loading", *FRONT_ENDS))}
        assert not bad, f"{mod} imports {bad}"


def test_nothing_below_the_front_ends_imports_them() -> None:
    for mod, imps in MODULES.items():
        if mod.startswith(FRONT_ENDS) or mod.endswith("_cli"):
            continue
        bad = {i for i in imps if i.startswith(FRONT_ENDS)}
        assert not bad, f"{mod} imports front end {bad}"


def test_import_is_light() -> None:
    code = (
        "import sys, anima, anima.cli, anima.recipe; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
