"""One `anima generate` does each piece of work once (issue 12): the workflow flags are read into
typed settings once, the recipe is made (and so validated) once, each model file's header is read
once, the model places are searched once, and the recorded recipe is made in one place (the
pipeline's `record`, which here returns the requested recipe itself: it already says which model,
hash, dtype and weights run it)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import TINY_MODEL_ARGS, isolate_home

import anima.cli.model_selection as model_selection
import anima.cli.workflow_flags as workflow_flags
import anima.recipe.core as recipe_core
import anima.weights.header as safetensors_io
from anima.cli import main
from anima.imageio import read_recipe
from anima.pipeline import Pipeline


def _count(monkeypatch, module, name: str, counts: Counter, key=None) -> None:
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        counts[key(*args) if key else name] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def test_one_generate_reads_checks_and_records_each_thing_once(tmp_path: Path, monkeypatch) -> None:
    isolate_home(tmp_path, monkeypatch)
    counts: Counter = Counter()
    headers: Counter = Counter()
    _count(monkeypatch, workflow_flags, "workflow_settings", counts)
    _count(monkeypatch, recipe_core, "_check_fields", counts)
    _count(monkeypatch, model_selection, "search_places", counts)
    monkeypatch.setattr(safetensors_io, "_HEADERS", {})  # as in a fresh process: nothing parsed yet
    _count(monkeypatch, safetensors_io, "_parse_header", headers, key=lambda path, _size: Path(path).name)
    recorded = []
    real_record = Pipeline.record

    def record(self, recipe):
        out = real_record(self, recipe)
        recorded.append(out is recipe)
        return out

    monkeypatch.setattr(Pipeline, "record", record)
    out = tmp_path / "one.png"
    flags = [
        "--size", "64x64", "--steps", "2", "--sampler", "euler", "--seed", "1", "--no-progress",
        "--hires-scale", "1.5", "--hires-steps", "1", "--nag-scale", "2", "--guidance", "rescale-cfg",
        "--mask-blur", "3", "--step-cache", "0.1",
    ]  # fmt: skip
    assert main(["generate", "1girl", *TINY_MODEL_ARGS, "--dtype", "fp32", *flags, "-o", str(out)]) == 0
    assert counts["workflow_settings"] == 1
    assert counts["_check_fields"] == 1
    assert counts["search_places"] == 1
    model_files = {"anima_tiny_dit.safetensors", "qwen3_tiny_te.safetensors", "wan21_tiny_vae.safetensors"}
    assert model_files <= set(headers) and all(n == 1 for n in headers.values()), headers
    assert recorded == [True]  # one recorded recipe, made where the flags were read
    r = read_recipe(out)
    assert (r.hires.scale, r.nag.scale, r.guidance.kind, r.inpaint.mask_blur) == (1.5, 2.0, "rescale-cfg", 3)
    assert r.model == "anima_tiny_dit" and r.dtype == "fp32" and r.perf.step_cache == 0.1


@pytest.mark.parametrize("n", [3])
def test_batches_make_one_recipe_each(tmp_path: Path, monkeypatch, n: int) -> None:
    isolate_home(tmp_path, monkeypatch)
    counts: Counter = Counter()
    _count(monkeypatch, recipe_core, "_check_fields", counts)
    flags = ["--size", "64x64", "--steps", "1", "--sampler", "euler", "--seed", "4", "--no-progress"]
    out = tmp_path / "b.png"
    argv = ["generate", "1girl", *TINY_MODEL_ARGS, "--dtype", "fp32", *flags, "--batch-count", str(n)]
    assert main([*argv, "-o", str(out)]) == 0
    assert counts["_check_fields"] == n  # the first batch's recipe, then one per further seed
