"""Done-when 4: a run killed with SIGKILL and resumed ends with the same weights as an uninterrupted
run (bitwise, on the CPU). The killed run is a real `anima train` subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_support import REPO, load_tensors, make_tiny, tiny_config

from anima.train.checkpoint import list_checkpoints
from anima.train.trainer import Trainer

pytestmark = pytest.mark.slow  # see pyproject.toml: the quick loop is -m 'not slow'

STEPS = 24


def _toml(cfg, path: Path) -> Path:
    import json

    lines = []
    for key, value in json.loads(cfg.to_json()).items():
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    files = make_tiny(tmp_path / "tiny", n_images=6)
    common = dict(steps=STEPS, save_every=2, ema_decay=0.8, shuffle_captions=True, caption_dropout=0.2,
                  save_dtype="fp32", warmup_steps=3)  # fmt: skip
    reference = Trainer(tiny_config(files, tmp_path / "straight", **common)).run()

    cfg = tiny_config(files, tmp_path / "killed", **common)
    toml = _toml(cfg, tmp_path / "train.toml")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "anima.cli.train", str(toml), "--quiet"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    try:
        while not list_checkpoints(cfg.output_dir) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = list_checkpoints(cfg.output_dir)
    assert done, "the run was killed before its first checkpoint"
    killed_at = int(done[-1].name.split("-")[1])
    assert killed_at < STEPS, "the run finished before it could be killed"
    assert not (Path(cfg.output_dir) / f"{cfg.output_name}.safetensors").exists()

    resumed = Trainer(cfg.with_(resume="latest")).run()
    want, got = load_tensors(reference), load_tensors(resumed)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert any(k.endswith("lora_B.weight") and want[k].any() for k in want)  # the weights did train
