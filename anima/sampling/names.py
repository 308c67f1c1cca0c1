"""The names a recipe may use for samplers, schedulers and guidance variants. No torch.

Why a separate module: the recipe validates these names where it is made (CLI flags, HTTP requests,
PNG metadata), long before torch is imported. The registries that implement them
(`anima.sampling.samplers.SAMPLERS`, `anima.sampling.schedules.SCHEDULERS`,
`anima.sampling.guidance.GUIDERS`) are checked against these tuples by a test, so the two cannot
drift apart.
"""

from __future__ import annotations

# ComfyUI's sampler names (KSampler's `sampler_name`), in the order the UIs list them.
SAMPLER_NAMES: tuple[str, ...] = (
    "euler",
    "euler_ancestral",
    "heun",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_sde_gpu",
    "er_sde",
    "res_multistep",
    "uni_pc",
    "uni_pc_bh2",
)

# ComfyUI's scheduler names (KSampler's `scheduler`).
SCHEDULER_NAMES: tuple[str, ...] = (
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
)

# Guidance variants (`anima.sampling.guidance`): plain CFG, CFG-Zero*, APG, RescaleCFG.
GUIDANCES: tuple[str, ...] = ("cfg", "cfg-zero-star", "apg", "rescale-cfg")
