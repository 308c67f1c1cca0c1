"""The benchmark's own arithmetic and outputs (the benchmark itself is `python -m bench`, not a test)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_pipeline
from PIL import Image

from anima.model.config import DiTConfig
from anima.weights.random import TINY
from bench.chart import draw_chart
from bench.floor import floor_step, forward_tflop
from bench.measure import PartTimer, timed_modules
from bench.runners import Case, rerun_anima, run_anima


def test_forward_flops_match_the_published_figure():
    # spec / research: 17.9 TFLOP per DiT forward at 1024x1024 (4096 tokens, 512 context rows)
    assert forward_tflop(DiTConfig(), 4096) == pytest.approx(17.9, abs=0.05)
    assert forward_tflop(DiTConfig(), 256, batch=2) == pytest.approx(2 * forward_tflop(DiTConfig(), 256))


def test_floor_runs_on_the_tiny_shapes():
    full = floor_step(TINY.dit, 16, torch.float32, repeats=1)
    cached = floor_step(TINY.dit, 16, torch.float32, include_context_kv=False, repeats=1)
    assert full > 0 and cached > 0


def test_hook_timer_counts_outermost_calls_only():
    import torch

    outer = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    with timed_modules(part=[outer, outer[0]]) as timers:
        outer(torch.zeros(1, 4))
        outer(torch.zeros(1, 4))
    t: PartTimer = timers["part"]
    assert len(t.calls) == 2 and t.first_start is not None and t.last_end >= t.first_start
    assert not outer._forward_hooks and not outer._forward_pre_hooks  # hooks removed


def test_chart_is_written(tmp_path):
    rows = [
        {"dtype": "bf16", "size": "256x256", "anima_per_step_s": 4.0, "diffusers_per_step_s": 6.0,
         "floor_full_s": 4.5, "anima_vae_s": 1.0, "diffusers_vae_s": 2.5},
        {"dtype": "fp32", "size": "256x256", "anima_per_step_s": 9.0, "floor_full_s": 8.0,
         "anima_vae_s": 2.0},
    ]  # fmt: skip
    path = draw_chart({"rows": rows, "machine": {"note": "test"}}, tmp_path / "c.png")
    with Image.open(path) as im:
        assert im.size[0] >= 900 and im.size[1] == 760


@pytest.mark.slow
def test_gpu_benchmark_dry_run_on_the_tiny_model(tmp_path):
    """`python -m bench.gpu` runs by hand on a lent GPU only; its CPU dry run keeps it from rotting."""
    import json

    from conftest import TOKENIZERS

    from bench import gpu

    only = "env,weights,e2e,floor,step_cache,release,budget_8gb,weights_int8,weights_8bit_dequant,fp16"
    argv = ["--device", "cpu", "--preset", "tiny", "--size", "64", "--steps", "2", "--only", only,
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
            "--tokenizers", str(TOKENIZERS)]  # fmt: skip
    assert gpu.main(argv) == 0
    assert torch.is_grad_enabled()  # the script does not switch autograd off for the process
    res = json.loads(next((tmp_path / "out").glob("gpu-*.json")).read_text())["sections"]
    assert set(res) == set(only.split(","))
    assert not [name for name, r in res.items() if "error" in r], res
    assert res["e2e"]["end_to_end"]["finite"] and res["weights_int8"]["psnr_db"] > 30
    assert next((tmp_path / "out").glob("gpu-*.png")).stat().st_size > 0


def test_the_rerun_of_the_end_to_end_phase_pays_no_text_pass():
    pipe, case = tiny_pipeline(), Case(64, 64, 1)
    calls: list[int] = []
    pipe.adapter.register_forward_hook(lambda *_: calls.append(1))
    first = run_anima(pipe, case)
    assert len(calls) == 2 and first["text_encode_s"] > 0
    again = rerun_anima(pipe, case)
    assert len(calls) == 2 and 0 < again["to_first_step_s"] < again["end_to_end_s"]
