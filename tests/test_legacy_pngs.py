"""PNGs written before the typed recipe (``anima-recipe/1``, settings as A1111 text pairs) still
re-run with ``--from-png`` to the same image (issue 12). The files and the commands that made them
are in ``tests/data/legacy_pngs/`` (see its provenance.json).

Pixels are compared to within 1/255 (the project's bar against ComfyUI), and on the CPU family
that wrote them, with the same number of threads, most must be equal byte for byte. Not all: since
the prompts of a pass are encoded as one packed sequence (commit 93869fe, issue 19), the text
encoder's matmuls have other row counts than when these PNGs were made, so their float32 sums round
differently in the last ulp, which moves a few pixels across an 8-bit boundary even there. AVX2,
AVX-512 and arm64 kernels, and other thread counts, differ in the last ulp as well.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, isolate_home
from PIL import Image

from anima.cli import build_parser, main
from anima.cli.generate import read_request
from anima.cli.model_selection import demo_model_set
from anima.imageio import read_recipe

DATA = REPO / "tests" / "data" / "legacy_pngs"
PROVENANCE = json.loads((DATA / "provenance.json").read_text())
CASES = PROVENANCE["cases"]
MOVED_PIXELS = 0.001  # share allowed one level off on the family that wrote them (measured: 0.01-0.02%)
_CPU_FLAGS = ("avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


def _same_cpu_family() -> bool:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    made = PROVENANCE["cpu"]
    mine = {f for f in _CPU_FLAGS if f in flags}
    same_isa = torch.backends.cpu.get_cpu_capability() == made["torch_cpu_capability"]
    same_threads = torch.get_num_threads() == made["torch_threads"]
    return same_isa and same_threads and mine == set(made["flags"].split())


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _assert_same_image(got: Path, want: Path) -> None:
    a, b = _pixels(got), _pixels(want)
    assert a.shape == b.shape
    # The int8 PNG was made when CPUs dequantised 8-bit weights per call: it records no matmul, and
    # `--from-png` re-runs it that way (`weights_kernel="dequant"`), not on today's int8 kernels.
    assert np.abs(a - b).max() <= 1, f"{want.name}: {np.abs(a - b).max()} levels apart"
    if _same_cpu_family():  # the ulps of the packed text pass: a few pixels, never a visible change
        moved = (a != b).any(axis=-1).mean()
        assert moved <= MOVED_PIXELS, f"{want.name}: {moved:.2%} of the pixels moved by one level"


def _inputs(args: list[str]) -> list[str]:
    """The recorded input images live in /tmp/legacy on the machine that wrote them: give them again."""
    out = []
    for flag in ("--init-image", "--mask"):
        if flag in args:
            out += [flag, str(DATA / args[args.index(flag) + 1])]
    return out


@pytest.mark.parametrize("name", sorted(c for c in CASES if c != "batch_0.png"))
def test_legacy_png_reruns_to_the_same_image(name: str, tmp_path: Path, monkeypatch) -> None:
    isolate_home(tmp_path, monkeypatch)
    out = tmp_path / "again.png"
    rc = main(
        ["generate", "--from-png", str(DATA / name), *_inputs(CASES[name]), "--no-progress", "-o", str(out)]
    )
    assert rc == 0
    if name.startswith("batch_"):  # a batch PNG re-runs its whole batch
        for i in range(2):
            _assert_same_image(tmp_path / f"again_{i}.png", DATA / f"batch_{i}.png")
    else:
        _assert_same_image(out, DATA / name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_legacy_recipe_reads_as_the_flags_that_made_it(name: str, tmp_path: Path, monkeypatch) -> None:
    """The old text form maps onto the typed settings without loss: reading the PNG gives the recipe
    that the same command line makes today (input paths apart: they moved)."""
    isolate_home(tmp_path, monkeypatch)
    old = read_recipe(DATA / name)
    flags = CASES[name]
    args = build_parser().parse_args(["generate", flags[0], *flags[1:], *_inputs(flags), "--model", "demo"])
    request = read_request(args, demo_model_set(), old.model_hash)
    now = request.plan.sheet_recipe or request.recipe  # a grid PNG carries the sheet's recipe
    assert now.with_(sources=old.sources) == old, shlex.join(flags)
