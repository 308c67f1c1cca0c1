"""The README's commands work on a fresh machine: each ```bash demo block (and the first block's
generate command) runs, in order, in one empty folder as a new user with an empty home, so only
the bundled demo model can be found; each ```bash demo-serve block starts a server that must
answer. `anima` is this checkout (a shim on PATH), whatever else is installed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx
import pytest
from conftest import REPO
from server_support import free_port, fresh_user_env

pytestmark = pytest.mark.slow

README = REPO / "README.md"
BLOCK = re.compile(r"^```(bash[^\n]*)\n(.*?)^```", re.S | re.M)


def blocks(kind: str) -> list[str]:
    found = BLOCK.findall(README.read_text(encoding="utf-8"))
    return [body for info, body in found if info.split() == ["bash", kind]]


def first_command() -> str:
    """The main job of the README's first line, less its install step."""
    info, body = BLOCK.findall(README.read_text(encoding="utf-8"))[0]
    assert info == "bash" and body.startswith("python3 -m pip install")
    return body.strip().split(" && ", 1)[1]


@pytest.fixture()
def user(tmp_path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "anima"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m anima "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, **fresh_user_env(tmp_path / "home"), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    work = tmp_path / "work"
    work.mkdir()
    return {"env": env, "cwd": work}


def test_readme_has_a_block_per_command():
    text = README.read_text(encoding="utf-8")
    for command in ("serve", "batch", "explore", "prompt", "train", "lora", "models"):
        assert f"### `anima {command}`" in text, command
    assert len(blocks("demo")) >= 6 and len(blocks("demo-serve")) == 1
    assert (REPO / "docs" / "web-ui.png").is_file()


def test_readme_commands_run_on_a_fresh_machine(user):
    script = "set -euo pipefail\n" + first_command() + "\n" + "\n".join(blocks("demo"))
    run = subprocess.run(
        ["bash", "-c", script], cwd=user["cwd"], env=user["env"], capture_output=True, text=True, timeout=1800
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    work = user["cwd"]
    for made in ("demo.png", "batch-out/manifest.json", "styles/index.html", "lora-out/shapes.safetensors",
                 "with-lora.png", "shapes-diffusers.safetensors"):  # fmt: skip
        assert (work / made).is_file(), (made, sorted(str(p.relative_to(work)) for p in work.rglob("*"))[:40])


def test_readme_serve_command_serves_the_demo(user):
    (command,) = blocks("demo-serve")
    port = free_port()  # the README's default port 7860 may be taken on a CI machine
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command.strip()} --port {port}"], cwd=user["cwd"], env=user["env"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                info = httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=2).json()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.2)
        assert "DEMO" in info["notice"] and info["model_info"][0]["demo"]
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)

