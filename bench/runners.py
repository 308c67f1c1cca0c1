"""One text-to-image run per library, timed part by part with forward hooks (see `bench.measure`).

Both runs use the same weights, prompt pair, size, step count, CFG 4 and dtype. anima runs its
Euler sampler (one batched cond+uncond DiT call per step); diffusers runs AnimaModularPipeline with
its FlowMatchEuler scheduler and ClassifierFreeGuidance (two batch-1 DiT calls per step), as it ships.
"""

from __future__ import annotations

import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.measure import peak_rss_gb, rss_gb, timed_modules

PROMPT = "masterpiece, best quality, 1girl, solo, long hair, looking at viewer, smile, cherry blossoms"
NEGATIVE = "worst quality, low quality, blurry, jpeg artifacts"
CFG = 4.0


def context_rows(tokenizers: Path) -> tuple[int, int]:
    """The DiT context rows of `PROMPT` and `NEGATIVE` before the zero padding: their T5 token counts."""
    from anima.text.tokenize import AnimaTokenizer

    tok = AnimaTokenizer.from_dirs(tokenizers / "qwen", tokenizers / "t5")
    pos, neg = (len(tok.tokenize(p).t5_ids) for p in (PROMPT, NEGATIVE))
    return pos, neg


@dataclass(frozen=True)
class Case:
    width: int
    height: int
    steps: int


def _result(timers: dict, case: Case, wall: float) -> dict:
    """Per-step numbers from the hooks: `per_step_s` is the fastest step's DiT time (robust to the
    shared machine's spikes and to first-touch page faults of memory-mapped weights); `per_step_mean_s`
    is the whole sampling phase over the step count (includes once-per-run work and the sampler)."""
    text, dit, vae = timers["text"], timers["dit"], timers["vae"]
    sampling = vae.first_start - text.last_end
    per = max(len(dit.calls) // case.steps, 1)
    steps = [sum(dit.calls[i : i + per]) for i in range(0, per * case.steps, per)]
    return {
        "size": f"{case.width}x{case.height}",
        "steps": case.steps,
        "text_encode_s": round(text.total, 3),
        "sampling_s": round(sampling, 3),
        "per_step_s": round(min(steps), 3),
        "per_step_mean_s": round(sampling / case.steps, 3),
        "step_s": [round(t, 3) for t in steps],
        "dit_calls": len(dit.calls),
        "dit_call_s": [round(c, 3) for c in dit.calls],
        "vae_decode_s": round(vae.last_end - vae.first_start, 3),
        "end_to_end_s": round(wall, 3),
        "rss_gb_after": round(rss_gb(), 2),
        "peak_rss_gb": round(peak_rss_gb(), 2),
    }


# -- anima -----------------------------------------------------------------------------------------


def load_anima(
    files, tokenizers: Path, dtype: torch.dtype, hash_cache: Path | None = None, *, case: Case, **options
):
    """The pipeline as `anima generate` sets it up: default `RunOptions` (on a CPU: the text encoder
    is released after encoding); `options`: more `RunOptions` fields (``weights="int8"``)."""
    from anima.pipeline import Pipeline, RunOptions
    from anima.runtime.precision import SHORT_NAMES

    options = RunOptions(
        device="cpu", dtype=SHORT_NAMES[dtype], hash_cache=hash_cache, plan_size=(case.width, case.height, 1),
        **options,
    )  # fmt: skip
    return Pipeline.from_files(
        files.dit, files.text_encoder, files.vae, tokenizer_dir=tokenizers, options=options
    )


def run_anima(pipe, case: Case, seed: int = 0) -> dict:
    return run_anima_images(pipe, case, seed)[0]


def run_anima_images(pipe, case: Case, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """`run_anima`'s numbers and the images (float [B, H, W, 3]), for quality comparisons."""
    recipe = _recipe(case, seed)
    t0 = time.perf_counter()
    pipe.ensure_text_encoder()  # released after the previous size's run: reported as te_reload_s
    reload_s = time.perf_counter() - t0
    te = pipe.text_encoder
    parts = {
        # The encoder's own forward and its parts (`encode_packed` runs the prompt pair as one
        # forward, each weight cast once); nested calls are counted once.
        "text": [te, te.embed_tokens, *te.layers, te.norm, pipe.adapter],
        "dit": [pipe.dit],
        "vae": [pipe.vae.conv2, pipe.vae.decoder],
    }
    with timed_modules(**parts) as timers:
        del parts, te  # no reference to the text encoder: the pipeline releases it before sampling
        t0 = time.perf_counter()
        result = pipe.generate(recipe)
        wall = time.perf_counter() - t0
    out = _result(timers, case, wall)
    out["image_std"] = round(result.images.float().std().item(), 4)
    out["te_reload_s"] = round(reload_s, 3)
    out["te_released_after"] = pipe.text_encoder is None
    return out, result.images


def _recipe(case: Case, seed: int):
    from anima.recipe import Recipe

    return Recipe(
        prompt=PROMPT, negative_prompt=NEGATIVE, width=case.width, height=case.height, steps=case.steps,
        cfg=CFG, sampler="euler", scheduler="simple", seed=seed,
    )  # fmt: skip


def rerun_anima(pipe, case: Case, seed: int = 1) -> dict:
    """The same prompts again with another seed (a batch count, a seed sweep): the text-encoder
    pass of the first run is kept (`anima.text.recent_contexts`), so neither the encoder's reload
    nor its pass should be paid. `to_first_step_s`: from the call to the first DiT forward."""
    first: list[float] = []
    hook = pipe.dit.register_forward_pre_hook(lambda *_: None if first else first.append(time.perf_counter()))
    try:
        t0 = time.perf_counter()
        pipe.generate(_recipe(case, seed))
        wall = time.perf_counter() - t0
    finally:
        hook.remove()
    return {"to_first_step_s": round(first[0] - t0, 3), "end_to_end_s": round(wall, 3)}


# -- diffusers -------------------------------------------------------------------------------------


@contextmanager
def _cosmos_without_torchvision() -> Iterator[None]:
    """diffusers' Cosmos transformer resizes its (all-zero) padding mask with torchvision, which this
    environment does not have. Provide that one call (nearest resize) while the benchmark runs."""
    from diffusers.models.transformers import transformer_cosmos

    if hasattr(transformer_cosmos, "transforms"):
        yield
        return

    def resize(img: torch.Tensor, size: list[int], interpolation: str = "nearest") -> torch.Tensor:
        return F.interpolate(img, size=size, mode=interpolation)

    transformer_cosmos.transforms = types.SimpleNamespace(
        functional=types.SimpleNamespace(resize=resize),
        InterpolationMode=types.SimpleNamespace(NEAREST="nearest"),
    )
    try:
        yield
    finally:
        del transformer_cosmos.transforms


def load_diffusers(folder: Path, dtype: torch.dtype):
    from diffusers.modular_pipelines.anima import AnimaAutoBlocks

    pipe = AnimaAutoBlocks().init_pipeline(str(folder))
    pipe.load_components(torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_diffusers(pipe, case: Case, seed: int = 0) -> dict:
    parts = {
        "text": [pipe.text_encoder, pipe.text_conditioner],
        "dit": [pipe.transformer],
        "vae": [pipe.vae.post_quant_conv, pipe.vae.decoder],
    }
    with _cosmos_without_torchvision(), timed_modules(**parts) as timers, torch.inference_mode():
        t0 = time.perf_counter()
        images = pipe(
            prompt=PROMPT, negative_prompt=NEGATIVE, height=case.height, width=case.width,
            num_inference_steps=case.steps, generator=torch.Generator().manual_seed(seed), output="images",
        )  # fmt: skip
        wall = time.perf_counter() - t0
    out = _result(timers, case, wall)
    out["image_size"] = list(images[0].size)
    return out
