"""stable-diffusion.cpp as a benchmark peer: its ``sd-cli`` on the same weights, size and steps.

Where ``sd-cli`` lives is given by ``--sd-cli PATH`` or the ``ANIMA_BENCH_SD_CLI`` environment
variable; with neither (or a path that is not there) the peer is skipped and the results say why.
Build one from the ``stable-diffusion-cpp-python`` sdist's ``vendor/stable-diffusion.cpp`` with cmake.

The DiT is converted once with ``sd-cli -M convert --type q8_0`` (cached next to the random weights);
the text encoder and VAE are the same safetensors files anima reads, and ``--type q8_0`` makes
sd.cpp hold every weight in Q8_0 as its users run it. Numbers come from its own ``-v`` log (load,
text conditioning, per step, VAE decode); peak RSS is the child's ``ru_maxrss`` from ``wait4``.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from bench.runners import CFG, NEGATIVE, PROMPT, Case

ENV = "ANIMA_BENCH_SD_CLI"
_LOAD = re.compile(r"loading tensors completed, taking ([\d.]+)s")
_TEXT = re.compile(r"get_learned_condition completed, taking ([\d.]+)s")
_STEP = re.compile(r"\|\s*(\d+)/(\d+) - ([\d.]+)(s/it|it/s)")
_SAMPLING = re.compile(r"sampling completed, taking ([\d.]+)s")
_DECODE = re.compile(r"(?:decode_first_stage|latent decoded) completed, taking ([\d.]+)s")
_TOTAL = re.compile(r"generate_image completed in ([\d.]+)s")


def find_sd_cli(flag: str | None) -> tuple[Path | None, str]:
    """(the sd-cli to run, or None; why not, when None)."""
    given = flag or os.environ.get(ENV)
    if not given:
        return None, f"no sd-cli given (--sd-cli or {ENV})"
    path = Path(given)
    if not (path.is_file() and os.access(path, os.X_OK)):
        return None, f"{path}: not an executable sd-cli"
    return path, ""


def q8_0_dit(sd_cli: Path, dit: Path, cache: Path) -> Path:
    """The DiT as stable-diffusion.cpp converts it (``-M convert --type q8_0``), made once."""
    out = cache / f"sdcpp-{dit.stem}-q8_0.gguf"
    if not out.exists():
        tmp = out.with_suffix(".partial")
        cmd = [str(sd_cli), "-M", "convert", "-m", str(dit), "-o", str(tmp), "--type", "q8_0"]
        subprocess.run(cmd, check=True, capture_output=True)
        tmp.rename(out)
    return out


def run(sd_cli: Path, gguf: Path, files, case: Case, out_png: Path, threads: int) -> dict:
    """One ``sd-cli`` text-to-image run -> its timings and peak RSS (a fresh process)."""
    cmd = [
        str(sd_cli), "--diffusion-model", str(gguf), "--llm", str(files.text_encoder),
        "--vae", str(files.vae),
        "-p", PROMPT, "-n", NEGATIVE, "-W", str(case.width), "-H", str(case.height),
        "--steps", str(case.steps), "--cfg-scale", str(CFG), "--sampling-method", "euler",
        "--type", "q8_0", "--diffusion-fa", "-t", str(threads), "-v", "-o", str(out_png),
    ]  # fmt: skip
    log = out_png.with_suffix(".log")
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace").replace("\r", "\n")
    out = {"tool": "stable-diffusion.cpp sd-cli", "cmd": " ".join(cmd[1:]), "rc": proc.returncode,
           "end_to_end_s": round(wall, 2), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2)}  # fmt: skip
    if proc.returncode != 0:
        out["error"] = text[-800:]
        return out
    out.update(parse_log(text, case.steps))
    return out


def parse_log(text: str, steps: int) -> dict:
    """Load, text, per-step (the fastest step's s/it of the progress bar), decode from an -v log."""

    def last(rx: re.Pattern) -> float | None:
        found = rx.findall(text)
        if not found:
            return None
        v = found[-1]
        return float(v if isinstance(v, str) else v[0])

    per_step = []
    for _done, total, value, unit in _STEP.findall(text):
        if int(total) == steps:
            per_step.append(float(value) if unit == "s/it" else 1.0 / float(value))
    out = {"load_s": last(_LOAD), "text_encode_s": last(_TEXT), "sampling_s": last(_SAMPLING),
           "vae_decode_s": last(_DECODE), "generate_s": last(_TOTAL)}  # fmt: skip
    # The progress bar's s/it is a running average; its first report is the first step alone, and
    # consecutive averages give each later step: t_k = k a_k - (k-1) a_(k-1).
    steps_s = []
    for k, a in enumerate(per_step[:steps], start=1):
        prev = per_step[k - 2] if k > 1 else 0.0
        steps_s.append(k * a - (k - 1) * prev)
    if steps_s:
        out["step_s"] = [round(s, 3) for s in steps_s]
        out["per_step_s"] = round(min(steps_s), 3)
    elif out["sampling_s"] is not None:
        out["per_step_s"] = round(out["sampling_s"] / steps, 3)
    return out
