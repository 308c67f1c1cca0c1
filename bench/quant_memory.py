"""Peak RSS of a full-size Q4_K GGUF DiT against the same DiT in bf16: ``python -m bench.quant_memory``.

Both files have the full Anima shapes (28 blocks, width 2048) and random weights: the bf16 file from
`anima.weights.random`, the GGUF written here with stable-diffusion.cpp's choice of tensors (every
matrix whose rows are whole 256-value blocks in Q4_K, except the embedders, the timestep path and the
final layer, which stay bf16) and random Q4_K blocks with finite scales. Each measurement runs in a
fresh process: load the DiT (bf16 compute), then two forwards (batch 2, as with CFG; 256x256 by
default) with a 512-token context; the first touches every weight, the second is timed as a step.
Reported: the process's peak RSS (VmHWM) after loading and after the forwards, and the bytes the
weights occupy. Memory-mapped bf16 weights are file pages the forward
brings in, so "after the forward" is the number that compares. Timings are not the point here (and
on this shared machine they are noisy); the ratio of the two peaks is, and the ratio of the two
second-forward times says what dequantising per call costs on a CPU at that size.

Results: ``bench/results/quant-memory-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from anima.model import ggml

_KEEP = ("x_embedder.", "t_embedder.", "final_layer.", "embedding")  # sd.cpp's tensor_should_be_converted


def _q4k_blocks(n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    raw = rng.integers(0, 256, size=(n_blocks, 144), dtype=np.uint8)
    raw[:, 0:2] = np.full(n_blocks, 2e-4, dtype=np.float16).view(np.uint8).reshape(-1, 2)  # d
    raw[:, 2:4] = np.full(n_blocks, 1e-4, dtype=np.float16).view(np.uint8).reshape(-1, 2)  # dmin
    return raw


def write_q4k(src: Path, dst: Path) -> dict[str, int]:
    """A GGUF with `src`'s names and shapes: Q4_K where sd.cpp would quantise (random blocks), else BF16."""
    import gguf

    from anima.weights.safetensors import load_mmap

    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(path=None, arch=None)
    counts = {"Q4_K": 0, "BF16": 0}
    for name, t in load_mmap(src).items():
        shape = tuple(t.shape)
        if len(shape) == 2 and shape[1] % 256 == 0 and not any(k in name for k in _KEEP):
            raw = _q4k_blocks(shape[0] * shape[1] // 256, rng)
            raw = raw.reshape(shape[0], ggml.row_bytes("Q4_K", shape[1]))
            writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType.Q4_K)
            counts["Q4_K"] += 1
        else:
            bits = t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint8)
            bits = bits.reshape(*shape[:-1], shape[-1] * 2)
            writer.add_tensor(name, bits, raw_shape=bits.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)
            counts["BF16"] += 1
    writer.write_header_to_file(path=dst)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts


_CHILD = r"""
import json, sys, time, torch
from anima.weights.loading import load_dit
import anima.model.text_encoder  # noqa: F401 (transformers, as a pipeline has it)
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
torch.set_num_threads(2)
base = hwm()  # torch, transformers and anima imported: the same in both runs
t0 = time.perf_counter()
dit, adapter = load_dit(sys.argv[1], dtype=torch.bfloat16)
loaded, t_load = hwm(), time.perf_counter() - t0
nbytes = sum(t.numel() * t.element_size() for m in (dit, adapter) for t in (*m.parameters(), *m.buffers()))
side = int(sys.argv[2]) // 8
x = torch.randn(2, 16, 1, side, side, dtype=torch.bfloat16)
ctx = torch.randn(2, 512, 1024, dtype=torch.bfloat16)
times = []
with torch.inference_mode():
    for _ in range(2):  # the first forward also pages the memory-mapped weights in
        t0 = time.perf_counter()
        dit(x, torch.tensor([0.5, 0.5]), ctx)
        times.append(time.perf_counter() - t0)
print(json.dumps({"rss_after_imports": base, "peak_rss_after_load": loaded, "peak_rss_after_forward": hwm(),
                  "weight_bytes": nbytes, "load_s": t_load, "forward_s": times[0],
                  "second_forward_s": times[1]}))
"""


def measure(path: Path, size: int) -> dict:
    cmd = [sys.executable, "-c", _CHILD, str(path), str(size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=Path("/tmp/anima-quant-memory"), help="where the files go")
    p.add_argument("--size", type=int, default=256, help="image side of the forward passes (batch 2, as CFG)")
    args = p.parse_args(argv)
    from anima.weights.random import FILE_NAMES, make_random

    args.cache.mkdir(parents=True, exist_ok=True)
    bf16 = args.cache / FILE_NAMES["dit"].format(preset="full")
    if not bf16.is_file():
        make_random("full", args.cache)
    q4k = args.cache / "anima-random-full-Q4_K.gguf"
    if not q4k.is_file():
        write_q4k(bf16, q4k)
    from anima.weights.gguf_header import read_gguf

    counts = read_gguf(q4k).qtypes()
    results = {"bf16": measure(bf16, args.size), "q4_k": measure(q4k, args.size)}
    gb = 2**30
    ratio = results["q4_k"]["peak_rss_after_forward"] / results["bf16"]["peak_rss_after_forward"]
    net = {k: r["peak_rss_after_forward"] - r["rss_after_imports"] for k, r in results.items()}
    report = {
        "files": {"bf16_bytes": bf16.stat().st_size, "q4_k_bytes": q4k.stat().st_size, "q4_k": counts},
        "results": results,
        "peak_rss_ratio_q4k_over_bf16": ratio,
        "peak_rss_above_imports_ratio": net["q4_k"] / net["bf16"],
        "weight_bytes_ratio": results["q4_k"]["weight_bytes"] / results["bf16"]["weight_bytes"],
        "second_forward_ratio_q4k_over_bf16": results["q4_k"]["second_forward_s"]
        / results["bf16"]["second_forward_s"],
        "size": args.size,
        "note": "shared 2-core CPU machine; times are noisy, the memory ratio is what this measures",
    }
    for name, r in results.items():
        load, fwd, w = (r[k] / gb for k in ("peak_rss_after_load", "peak_rss_after_forward", "weight_bytes"))
        print(f"{name:5}: peak RSS {load:.2f} GB loaded, {fwd:.2f} GB after a forward; weights {w:.2f} GB")
    print(f"Q4_K / bf16 peak RSS after the forwards: {ratio:.2f} ({net['q4_k'] / net['bf16']:.2f} above the "
          f"imports' {results['bf16']['rss_after_imports'] / gb:.2f} GB); weight bytes "
          f"{report['weight_bytes_ratio']:.2f}")  # fmt: skip
    out = Path(__file__).parent / "results" / f"quant-memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"second forward at {args.size}x{args.size}: bf16 {results['bf16']['second_forward_s']:.1f} s, "
          f"Q4_K {results['q4_k']['second_forward_s']:.1f} s")  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
