"""Data parallel: `torchrun` with two CPU processes (gloo) computes the same training as one process
accumulating both processes' micro-batches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from train_support import REPO, load_tensors, make_tiny, tiny_config

from anima.train.trainer import Trainer

pytestmark = pytest.mark.slow  # see pyproject.toml: the quick loop is -m 'not slow'


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_two_gloo_processes_match_one_process_with_accumulation(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun")
    assert torchrun is not None, "torchrun (part of torch) is not on PATH"
    files = make_tiny(tmp_path / "tiny", n_images=8)
    common = dict(steps=3, batch_size=2, save_dtype="fp32", caption_dropout=0.25, lr=3e-3)
    single = Trainer(tiny_config(files, tmp_path / "single", grad_accum=2, **common)).run()

    cfg = tiny_config(files, tmp_path / "ddp", grad_accum=1, **common)
    toml = tmp_path / "ddp.toml"
    toml.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in json.loads(cfg.to_json()).items()) + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "anima.cli.train", str(toml), "--quiet"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    want, got = load_tensors(single), load_tensors(Path(cfg.output_dir) / f"{cfg.output_name}.safetensors")
    assert want.keys() == got.keys()
    moved = 0
    for k in want:
        assert torch.allclose(want[k], got[k], atol=1e-6, rtol=0), k
        moved += k.endswith("lora_B.weight") and bool(want[k].abs().max() > 0)
    assert moved > 0  # training did change the weights
