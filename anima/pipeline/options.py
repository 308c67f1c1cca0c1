"""`RunOptions`: how a pipeline runs its models, given once when it is built.

Every front end (``anima generate``, ``serve``, ``batch``, ``explore``, the Ray actors) builds one
`RunOptions` and hands it to `Pipeline.load`, so they all get the same policy from the same
options: where the parts live under a memory budget, whether the text encoder is released after
encoding, which attention kernel runs, 8-bit weights, compilation, how LoRA names resolve.

Options that change the image (`weights`, `fp16_accumulation`) are also stamped into every recipe
the pipeline records (`Recipe.perf`), so a PNG says how it was made; per-image speed settings
(step cache, VAE tiling) live in the recipe itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from anima.errors import AnimaError
from anima.model.attention import resolve_backend
from anima.model.qmatmul import DEQUANT
from anima.recipe import WEIGHT_FORMATS
from anima.runtime.cpu_gemm import check_cpu_gemm
from anima.runtime.memory import parse_budget
from anima.runtime.precision import parse_dtype

LoraResolver = Callable[[str], Path]
ControlResolver = Callable[[str], Path]  # control patch name -> file (anima.pipeline.controls)


@dataclass(frozen=True)
class RunOptions:
    """`device`: cpu, cuda, cuda:1, ...; `dtype`: fp32, bf16, fp16 or auto (`anima.runtime.precision`);
    `vram_budget`: GB of device memory to plan for, "auto" (free memory) or None (no plan);
    `ram_budget`: the same for a CPU run, GB of host memory or "auto" (MemAvailable): the text
    encoder is released after encoding, and DiT blocks that do not fit in the compute dtype stay in
    the file's dtype (bf16) and are upcast one at a time (`anima.runtime.memory.plan_ram`);
    `weights_kernel`: "dequant" runs the 8-bit layers as dequantise + matmul whatever the device has
    (how CPUs ran them before anima's int8 kernels: a recipe recorded then re-runs as it ran);
    `release_text_encoder`: free it after encoding (None: on a CPU, or when the memory plan says so);
    `cpu_gemm`: which library runs a CPU run's fp32 linears and attention, auto, mkl or onednn
    (`anima.runtime.cpu_gemm`; auto is oneDNN for linears on every x86 CPU but Intel's AVX-512 ones
    and for attention on non-Intel AVX-512 CPUs, where each was measured faster);
    `plan_size`: (width, height, batch) the memory plan and the compile warm-up are sized for."""

    device: str = "cpu"
    dtype: str = "auto"
    vae_dtype: str | None = None
    weights: str | None = None
    weights_kernel: str | None = None
    vram_budget: float | str | None = None
    ram_budget: float | str | None = None
    release_text_encoder: bool | None = None
    attention: str = "auto"
    cpu_gemm: str = "auto"
    compile: bool = False
    fp16_accumulation: bool = False
    merge_loras: bool = False
    lora_resolver: LoraResolver | None = field(default=None, compare=False)
    # upscaler model name -> file (None: names are paths); `anima.weights.upscale_models`
    upscaler_resolver: LoraResolver | None = field(default=None, compare=False)
    control_resolver: ControlResolver | None = field(default=None, compare=False)
    hash_cache: Path | None = None
    plan_size: tuple[int, int, int] = (1024, 1024, 1)

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not self.device:
            raise AnimaError(f"device must be a name such as cpu or cuda:0, got {self.device!r}")
        for what, name in (("dtype", self.dtype), ("VAE dtype", self.vae_dtype)):
            if name is not None and name != "auto":
                parse_dtype(name, what=what)
        if self.weights is not None and self.weights not in WEIGHT_FORMATS:
            raise AnimaError(f"weights format must be {' or '.join(WEIGHT_FORMATS)}, got {self.weights!r}")
        if self.weights_kernel not in (None, DEQUANT):
            raise AnimaError(f"weights kernel must be {DEQUANT!r} (or unset), got {self.weights_kernel!r}")
        if isinstance(self.vram_budget, bool):
            raise AnimaError(f"memory budget takes a number of GB or 'auto', got {self.vram_budget!r}")
        object.__setattr__(self, "vram_budget", parse_budget(self.vram_budget))
        if isinstance(self.ram_budget, bool):
            raise AnimaError(f"RAM budget takes a number of GB or 'auto', got {self.ram_budget!r}")
        object.__setattr__(self, "ram_budget", parse_budget(self.ram_budget, setting="ram_budget"))
        if self.ram_budget is not None and not self.device.startswith("cpu"):
            raise AnimaError(
                "a RAM budget plans a CPU run; on a GPU give a VRAM budget", setting="ram_budget"
            )
        resolve_backend(self.attention)
        check_cpu_gemm(self.cpu_gemm)
        w, h, b = self.plan_size
        if min(w, h, b) < 1:
            raise AnimaError(f"plan size must be positive, got {self.plan_size}")
