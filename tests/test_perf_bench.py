"""The benchmark's own arithmetic and outputs (the benchmark itself is `python -m bench`, not a test)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from anima.config import DiTConfig
from anima.random_weights import TINY
from bench.chart import draw_chart
from bench.floor import floor_step, forward_tflop
from bench.measure import PartTimer, timed_modules


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
