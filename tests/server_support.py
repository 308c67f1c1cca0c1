"""Helpers for the server tests: the tiny-model service, a real uvicorn server in a thread or in a
subprocess, on 127.0.0.1 and a free port chosen by the OS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from conftest import REPO, SHARED, TINY, TOKENIZERS

WEIGHTS = TINY / "weights"
TINY_FILES = {
    "dit": WEIGHTS / "anima_tiny_dit.safetensors",
    "text_encoder": WEIGHTS / "qwen3_tiny_te.safetensors",
    "vae": WEIGHTS / "wan21_tiny_vae.safetensors",
}
MODEL_NAME = "anima_tiny_dit"


LLLITE_PATCHES = SHARED / "fixtures" / "anima-lllite" / "lllite"  # the tiny model's LLLite patches


def tiny_service(lora_dirs=(), patch_dirs=()):
    from anima.pipeline import RunOptions
    from anima.server.service import PipelineService

    return PipelineService.from_files(
        TINY_FILES["dit"], TINY_FILES["text_encoder"], TINY_FILES["vae"],
        tokenizer_dir=TOKENIZERS, lora_dirs=lora_dirs, options=RunOptions(device="cpu", dtype="fp32"),
        patch_dirs=patch_dirs,
    )  # fmt: skip


class LiveServer:
    """`create_app(...)` served by uvicorn in a thread; `url` is http://127.0.0.1:PORT."""

    def __init__(self, app) -> None:
        import uvicorn

        self.app = app
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    @property
    def ctx(self):
        return self.app.state.ctx


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m anima.cli serve ...` in a subprocess (for kill -9 tests)."""

    def __init__(
        self, data_dir: Path, *extra: str, port: int | None = None, home: Path | None = None
    ) -> None:
        """`home`: run as a fresh user whose home is this folder, with no model arguments (the
        server then finds no model and serves the bundled demo); None: the tiny model's files."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        models = [
            "--dit", str(TINY_FILES["dit"]), "--text-encoder", str(TINY_FILES["text_encoder"]),
            "--vae", str(TINY_FILES["vae"]), "--tokenizer-dir", str(TOKENIZERS), "--dtype", "fp32",
        ]  # fmt: skip
        self.args = [
            sys.executable, "-m", "anima", "serve", "--port", str(self.port), "--data-dir", str(data_dir),
            *(models if home is None else []), *extra,
        ]  # fmt: skip
        self.home = home
        self.proc: subprocess.Popen | None = None
        self.log = Path(data_dir) / f"server-{self.port}.log"

    def start(self, timeout: float = 60) -> ServerProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        if self.home is not None:
            env.update(fresh_user_env(self.home))
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/sdapi/v1/progress", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not answer: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def fresh_user_env(home: Path) -> dict[str, str]:
    """Environment of a new user on a fresh machine: an empty home, no model or cache anywhere."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
    }
    for key in ("ANIMA_HOME", "ANIMA_MODELS_DIR", "COMFYUI_PATH", "HF_HOME", "HF_HUB_CACHE"):
        env[key] = ""  # empty counts as unset
    return env


def wait_job(client: httpx.Client, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not finish")
