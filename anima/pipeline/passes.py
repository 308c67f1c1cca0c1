"""The passes of one image batch: main pass, hires passes, VAE decode, inpaint composite.

`run` plans the passes, `sample` runs one of them: per-step contexts (prompt editing), guidance,
NAG, the latent noise mask, the per-pass DiT caches, and the sampler. Progress is counted across
all passes by `StepHooks`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from anima.errors import AnimaError
from anima.model.dit_cache import FirstBlockCache, RunCaches
from anima.model.latent import denormalize_latent, normalize_latent
from anima.pipeline.result import Result
from anima.recipe import Advanced, Recipe
from anima.sampling import samplers, schedules
from anima.sampling.denoiser import StepIndex, make_denoiser
from anima.sampling.guidance import GuidanceConfig, Guider
from anima.sampling.step_window import step_window
from anima.text.prompt_editing import prompts_per_step
from anima.workflows import comfy_image, hires, inpaint
from anima.workflows.control import ControlRun
from anima.workflows.nag import NagControl, nag_attention
from anima.workflows.reference import ReferenceFrame, fit_image, needs_edit_lora_note
from anima.workflows.regions import RegionalControl, region_masks, regional_attention
from anima.workflows.resample import resize_images
from anima.workflows.variations import varied_noise

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
Preview = Callable[[int, int, torch.Tensor], None]


@dataclass(frozen=True)
class SamplingPass:
    """Steps, strength, sampler and scheduler of one pass (the main pass or a hires pass);
    `advanced`: KSamplerAdvanced's window of the schedule (None: all of it)."""

    steps: int
    denoise: float
    sampler: str
    scheduler: str
    advanced: Advanced | None = None

    def sigmas(self, shift: float) -> torch.Tensor:
        sigmas = schedules.get_sigmas(
            schedules.FlowModelSampling(shift=shift), self.scheduler, self.steps, denoise=self.denoise,
            discard_penultimate=samplers.discards_penultimate(self.sampler),
        )  # fmt: skip
        a = self.advanced
        if a is None or not a.on:
            return sigmas
        return step_window(sigmas, a.start_step, a.end_step, a.leftover_noise)

    def num_steps(self, shift: float) -> int:
        return len(self.sigmas(shift)) - 1


class StepHooks:
    """Per-step callback of a run: NaN check, progress over all passes, live previews."""

    def __init__(self, progress: Progress | None = None, preview: Preview | None = None) -> None:
        self.progress, self.preview = progress, preview
        self.total = 0
        self.done = 0

    def start(self, total: int) -> None:
        self.total = total

    def step(self, i: int, x0: torch.Tensor) -> None:
        """Step `i` (0-based, counted over the whole run) produced the prediction `x0`."""
        # Stop at the first non-finite step instead of writing a black image at the end.
        if not torch.isfinite(x0).all():
            raise AnimaError(
                f"the prediction became NaN/inf at step {i + 1}; "
                "use the bf16 or fp32 dtype (fp16 overflow) or a lower CFG"
            )
        if self.progress is not None:
            self.progress(i + 1, self.total)
        if self.preview is not None:
            self.preview(i + 1, self.total, x0.cpu())  # the sampling state may live on a GPU

    def finish_pass(self, steps: int) -> None:
        self.done += steps


@dataclass(frozen=True)
class PassInputs:
    """What a pass adds to the DiT run besides prompts: region masks [R, H, W] at the recipe size
    (`anima.workflows.regions`) and the reference frame at the pass size (`anima.workflows.reference`)."""

    region_masks: torch.Tensor | None = None
    reference: ReferenceFrame | None = None


def run(
    pipe, recipe: Recipe, init_image: torch.Tensor | None, pixel_mask: torch.Tensor | None, hooks: StepHooks,
    reference: torch.Tensor | None = None, control: ControlRun | None = None,
):  # fmt: skip
    """The passes of one image batch -> `Result` (images, latents, recorded recipes, notes).
    `reference`: the reference image [1, H, W, 3] of reference editing (recipe.reference);
    `control`: the installed control patches (`anima.pipeline.controls`), applied in every pass."""
    notes: list[str] = []
    masks = region_masks(recipe) if recipe.regions else None
    if reference is not None and needs_edit_lora_note(recipe.loras):
        notes.append(needs_edit_lora_note(recipe.loras))  # the CLI prints notes; the server returns them
        log.info("%s", notes[-1])

    def inputs(width: int, height: int) -> PassInputs:
        if reference is None:
            return PassInputs(masks)
        ref = pipe.encode_image(fit_image(reference, width, height), tiled=recipe.perf.tiled_vae)
        return PassInputs(masks, ReferenceFrame(normalize_latent(ref).float(), recipe.reference.strength))

    h = recipe.hires
    plan = hires.plan_passes(recipe.width, recipe.height, h.scale, max_step=h.max_step, max_side=h.max_side)
    if plan.sizes:
        notes.append(plan.describe())
        log.info("%s", notes[-1])
    if recipe.perf.step_cache:
        notes.append(
            f"step cache on (threshold {recipe.perf.step_cache:g}): images differ from a run without it"
        )
    main = SamplingPass(recipe.steps, recipe.denoise, recipe.sampler, recipe.scheduler, recipe.advanced)
    second = SamplingPass(
        h.steps or recipe.steps, h.denoise, h.sampler or recipe.sampler, h.scheduler or recipe.scheduler
    )
    passes = [main] + [second] * len(plan.sizes)
    hooks.start(sum(p.num_steps(recipe.shift) for p in passes))

    tiled = recipe.perf.tiled_vae
    b, height, width = recipe.batch_size, recipe.height // 8, recipe.width // 8
    if init_image is not None:
        latent = normalize_latent(pipe.encode_image(init_image, tiled=tiled)).float()
        inpaint.ensure_finite(latent, "the encoded init image")
        latent = latent.expand(b, -1, -1, -1, -1)
    else:
        latent = torch.zeros(b, 16, 1, height, width)
    v = recipe.variation
    noise = varied_noise(recipe.seed, tuple(latent.shape), v.seed, v.strength)
    if pixel_mask is None:
        lmask = None
    elif recipe.comfy.noise_mask:  # SetLatentNoiseMask: any mask size, scaled as ComfyUI does
        lmask = comfy_image.noise_mask_latent(pixel_mask, tuple(latent.shape))
    else:
        lmask = inpaint.latent_mask(pixel_mask, height, width)
    contexts: dict[str, torch.Tensor] = {}  # prompt text -> context, shared by all passes
    x = sample(pipe, recipe, main, latent, noise, lmask, hooks, contexts, first=True,
               extra=inputs(recipe.width, recipe.height), control=control)  # fmt: skip
    for w, hh in plan.sizes:
        if h.upscaler == "lanczos" or h.uses_model:
            pixels = pipe.decode_latent(denormalize_latent(x), tiled=tiled)
            if h.uses_model:  # the model's own factor first, then Lanczos to the pass size
                pixels = pipe.upscaler(h.upscaler, h.upscaler_hash)(pixels)
            latent = normalize_latent(
                pipe.encode_image(resize_images(pixels, w, hh, "lanczos"), tiled=tiled)
            ).float()
        else:
            latent = hires.upscale_latent(x, hh // 8, w // 8, h.upscaler)
        noise = varied_noise(recipe.seed, tuple(latent.shape), v.seed, v.strength)
        extra = inputs(w, hh)
        x = sample(pipe, recipe, second, latent, noise, None, hooks, contexts, first=False, extra=extra,
                   control=control)  # fmt: skip
    images = pipe.decode_latent(denormalize_latent(x), tiled=tiled)
    inpaint.ensure_finite(images, "the decoded image")
    if pixel_mask is not None and not recipe.comfy.noise_mask:  # ComfyUI composites nothing
        images = inpaint.composite(images, init_image, pixel_mask)
    return Result(images=images, latents=x.cpu(), recipes=[recipe] * b, notes=notes)


def sample(
    pipe, recipe: Recipe, spec: SamplingPass, latent, noise, lmask, hooks: StepHooks, contexts, *,
    first: bool, extra: PassInputs | None = None, control: ControlRun | None = None,
):  # fmt: skip
    """One sampling pass from `latent` (model space) at `spec`'s steps, denoise and sampler."""
    extra = extra or PassInputs()
    model_sampling = schedules.FlowModelSampling(shift=recipe.shift)
    sigmas = spec.sigmas(recipe.shift)
    n = len(sigmas) - 1
    zero_neg = recipe.comfy.zero_negative
    regions_on = extra.region_masks is not None and (first or recipe.regional.end_step == 0)
    pos_texts = prompts_per_step(recipe.prompt, n)
    neg_texts = prompts_per_step(recipe.negative_prompt, n)
    region_texts = [prompts_per_step(r.prompt, n) for r in recipe.regions] if regions_on else []
    # Every prompt of the pass through the text encoder at once (one pass over its weights).
    pipe.encode_contexts(
        [(p, False) for p in pos_texts] + [(p, zero_neg) for p in neg_texts]
        + [(p, False) for texts in region_texts for p in texts],
        contexts,
    )  # fmt: skip
    pos = pipe.contexts(pos_texts, contexts)
    neg = pipe.contexts(neg_texts, contexts, zeroed=zero_neg)
    regional = None
    if regions_on:
        g = recipe.regional  # each region prompt encoded once (per distinct per-step text)
        per_region = [pipe.contexts(texts, contexts) for texts in region_texts]
        regional = RegionalControl(extra.region_masks, per_region, base_weight=g.base_weight,
                                   overlap=g.overlap, active_steps=g.end_step or None)  # fmt: skip
    pipe.after_text_encoding()
    g = recipe.guidance
    guider = Guider(
        GuidanceConfig(g.kind, recipe.cfg, g.rescale, g.apg_eta, g.apg_momentum, g.apg_norm_threshold)
    )
    nag = NagControl(recipe.nag.scale, recipe.nag.tau, recipe.nag.alpha) if recipe.nag.on else None
    zero_init = g.zero_init_steps if first and g.kind == "cfg-zero-star" else 0
    step = FirstBlockCache(threshold=recipe.perf.step_cache) if recipe.perf.step_cache else None
    # Per pass: the cross-attention K/V of each context (exact), and the opt-in step cache.
    model_x0 = functools.partial(
        _model_x0, pipe, run=RunCaches(pipe.dit, step_cache=step), nag=nag,
        regional=regional, step_of=StepIndex(sigmas), reference=extra.reference, control=control,
    )  # fmt: skip
    # NAG and regions act on the cond forward only, so it runs apart from the uncond one.
    denoise = make_denoiser(
        model_x0, pos=pos, neg=neg, sigmas=sigmas, guider=guider,
        attention_guidance=nag is not None or regional is not None, zero_init_steps=zero_init,
    )  # fmt: skip
    # The sampling state lives with the DiT: on a GPU, no host round trip (and no host-side
    # sampler arithmetic with the GPU idle) per step. Noise is still drawn on the CPU (seeds).
    dev = pipe.device
    latent, noise = latent.to(dev), noise.to(dev)
    if first and not recipe.advanced.add_noise:
        noise = torch.zeros_like(noise)  # KSamplerAdvanced add_noise "disable": no seed noise
    if lmask is not None:
        denoise = inpaint.masked_denoiser(denoise, latent, noise, lmask.to(dev))
    x = model_sampling.noise_scaling(sigmas[0], noise, latent)
    step_noise = samplers.noise_source_for(spec.sampler, x, sigmas, recipe.seed)
    offset = hooks.done
    with contextlib.ExitStack() as scope:  # NAG wraps the layers first, regions wrap NAG
        if nag is not None:
            scope.enter_context(nag_attention(pipe.dit, nag))
        if regional is not None:
            scope.enter_context(regional_attention(pipe.dit, regional))
        x = samplers.SAMPLERS[spec.sampler](
            denoise, x, sigmas, noise=step_noise, model_sampling=model_sampling,
            callback=lambda i, _x, x0, _sigma: hooks.step(offset + i, x0),
        )  # fmt: skip
    hooks.finish_pass(n)
    return x


def _model_x0(
    pipe, x, sigma, ctx, negative=None, *, run: RunCaches, nag: NagControl | None,
    regional: RegionalControl | None = None, step_of: StepIndex | None = None,
    reference: ReferenceFrame | None = None, control: ControlRun | None = None,
) -> torch.Tensor:  # fmt: skip
    """The DiT as an x0 predictor: x0 = x - sigma * v in fp32, on x's device. `negative` marks the
    cond forward (NAG's negative context); regions act there, the reference frame on every forward;
    `control`: patches checked against this call's sigma (never with a reference frame: refused in
    `Pipeline.generate`)."""
    inp = x.to(pipe.device, pipe.dtype)
    if reference is not None:
        inp = reference.extend(inp)
    args = (inp, sigma.to(pipe.device, torch.float32), ctx)
    with contextlib.ExitStack() as scope:
        if negative is not None and nag is not None:
            scope.enter_context(nag.guiding(negative))
        if negative is not None and regional is not None and step_of is not None:
            cfg = pipe.dit.cfg
            grid = (inp.shape[2] // cfg.patch_temporal, -(-inp.shape[3] // cfg.patch_spatial),
                    -(-inp.shape[4] // cfg.patch_spatial))  # fmt: skip
            scope.enter_context(regional.guiding(step_of(sigma), grid, pipe.device))
        if control:
            scope.enter_context(control.calling(args[0], args[1]))
        v = pipe.dit(*args, **run.kwargs(ctx))
    if reference is not None:
        v = ReferenceFrame.frames(v, x.shape[2])
    return x - v.float().to(x.device) * sigma.to(x.device).view(-1, 1, 1, 1, 1)
