"""The one place that orchestrates: prompt -> conditioning -> sampling -> VAE -> images.

Everything numerical lives elsewhere (model/, samplers, schedules, guidance); this module only
decides which device and dtype each part runs in and in what order, and records a Recipe for
every image so it can be reproduced.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from anima.errors import AnimaError
from anima.runtime.precision import resolve_dtype
from anima.sampling.passes import SamplingPass, StepHooks
from anima.weights.hashes import model_hash

log = logging.getLogger(__name__)

# progress(step, total) -> None; the CLI turns it into a bar, the server into /progress.
Progress = Callable[[int, int], None]


@dataclass
class Result:
    """Images of one run: float [B,H,W,3] in [0,1], their 8-bit versions, latents and recipes."""

    images: torch.Tensor
    latents: torch.Tensor
    recipes: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the workflows decided (hires plan, crops)

    def uint8(self):
        from anima.imageio import to_uint8

        return to_uint8(self.images)

    def pil(self) -> list:
        from PIL import Image

        return [Image.fromarray(a) for a in self.uint8()]


class Pipeline:
    """Loaded Anima models plus the policy for running them.

    Build with `from_files` (the three ComfyUI files) or `from_pretrained` (a diffusers folder);
    call with a prompt or a Recipe.
    """

    def __init__(
        self,
        *,
        dit: torch.nn.Module,
        adapter: torch.nn.Module,
        text_encoder: torch.nn.Module,
        tokenizer,
        vae: torch.nn.Module,
        device: torch.device,
        dtype: torch.dtype,
        model_name: str = "",
        model_hash: str = "",
    ) -> None:
        from anima.text.conditioning import TextConditioner

        self.dit = dit
        self.adapter = adapter
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.vae = vae
        self.device = device
        self.dtype = dtype
        self.model_name = model_name
        self.model_hash = model_hash
        self.lora_resolver = None  # LoRA name -> path (the CLI searches loras/ folders); None: paths
        self.merge_loras = False  # merge LoRA deltas into the weights per run instead of wrapping layers
        # Performance options (anima.runtime.options sets them; these defaults change nothing).
        self.memory_plan = None  # anima.runtime.memory.MemoryPlan: text-encoder release, VAE decode budget
        self.text_encoder_loader = None  # () -> text encoder: reloads it after a release
        self.step_cache = None  # threshold of the opt-in first-block step cache (changes images)
        self.conditioner = TextConditioner(
            tokenizer=tokenizer, text_encoder=text_encoder, adapter=adapter, device=device, dtype=dtype
        )

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_files(
        cls,
        dit: str | Path,
        text_encoder: str | Path,
        vae: str | Path,
        *,
        tokenizer_dir: str | Path | None = None,
        qwen_tokenizer: str | Path | None = None,
        t5_tokenizer: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = "auto",
        vae_dtype: str | torch.dtype | None = None,
        hash_cache: str | Path | None = None,
    ) -> Pipeline:
        """Load the three ComfyUI split files. Tokenizers: a folder with qwen/ and t5/, or each.

        `hash_cache`: a JSON file remembering the DiT's A1111 model hash (else it is re-hashed)."""
        from anima.text.tokenize import AnimaTokenizer
        from anima.weights import loading

        device = torch.device(device)
        dt = resolve_dtype(dtype, device)
        qwen_dir, t5_dir = _tokenizer_dirs(tokenizer_dir, qwen_tokenizer, t5_tokenizer)
        tok = AnimaTokenizer.from_dirs(qwen_dir, t5_dir)
        d, a = loading.load_dit(dit, device=device, dtype=dt)
        te = loading.load_text_encoder(text_encoder, device=device)
        v = loading.load_vae(vae, device=device, dtype=resolve_dtype(vae_dtype or dt, device))
        name = Path(dit).stem
        pipe = cls(
            dit=d, adapter=a, text_encoder=te, tokenizer=tok, vae=v, device=device, dtype=dt,
            model_name=name, model_hash=model_hash(dit, hash_cache),
        )  # fmt: skip
        pipe.text_encoder_loader = functools.partial(loading.load_text_encoder, text_encoder, device=device)
        return pipe

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = "auto",
        vae_dtype: str | torch.dtype | None = None,
        hash_cache: str | Path | None = None,
    ) -> Pipeline:
        """Load a diffusers-format Anima folder (transformer/, text_conditioner/, text_encoder/,
        tokenizer/, t5_tokenizer/, vae/)."""
        from anima.text.tokenize import AnimaTokenizer
        from anima.weights import loading

        folder = Path(folder)
        for sub in ("transformer", "text_conditioner", "text_encoder", "tokenizer", "t5_tokenizer", "vae"):
            if not (folder / sub).is_dir():
                raise AnimaError(f"{folder}: not a diffusers Anima folder (no {sub}/ inside)")
        device = torch.device(device)
        dt = resolve_dtype(dtype, device)
        tok = AnimaTokenizer.from_dirs(folder / "tokenizer", folder / "t5_tokenizer")
        d, a = loading.load_dit_diffusers(
            folder / "transformer", folder / "text_conditioner", device=device, dtype=dt
        )
        te = loading.load_text_encoder(folder / "text_encoder", device=device)
        v = loading.load_vae(folder / "vae", device=device, dtype=resolve_dtype(vae_dtype or dt, device))
        pipe = cls(
            dit=d, adapter=a, text_encoder=te, tokenizer=tok, vae=v, device=device, dtype=dt,
            model_name=folder.name, model_hash=model_hash(folder / "transformer", hash_cache),
        )  # fmt: skip
        te_dir = folder / "text_encoder"
        pipe.text_encoder_loader = functools.partial(loading.load_text_encoder, te_dir, device=device)
        return pipe

    # ---------------------------------------------------------------- running
    def __call__(
        self,
        prompt: str = "",
        *,
        init_image: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        progress: Progress | None = None,
        **settings,
    ) -> Result:
        """`pipe("1girl, ...", steps=20, seed=1, hires_scale=1.5)`: any Recipe or `Workflow` field
        as a keyword (workflow fields are stored in ``recipe.extra``)."""
        from dataclasses import fields

        from anima.recipe import Recipe
        from anima.recipe.settings import Workflow

        names = {f.name for f in fields(Workflow)}
        workflow = Workflow(**{k: settings.pop(k) for k in list(settings) if k in names})
        recipe = workflow.apply(Recipe(prompt=prompt, **settings))
        return self.generate(recipe, init_image=init_image, mask=mask, progress=progress)

    def generate(
        self,
        recipe,
        *,
        init_image: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        progress: Progress | None = None,
        preview: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> Result:
        """Run one recipe; its workflow options come from ``recipe.extra`` (`Workflow`).

        `init_image` ([1,H,W,3] in [0,1]) makes it img2img at recipe.denoise; `mask` ([1,H,W] in
        [0,1], white = repaint, the init image's size) makes it inpainting. `progress(step, total)`
        counts the steps of all passes; `preview(step, total, x0)` sees each step's denoised latent
        (normalized), for live previews.
        """
        from anima.lora.use import applied_loras, split_prompt_loras
        from anima.runtime.memory import ensure_text_encoder

        ensure_text_encoder(self)  # a memory plan may have released it; LoRAs may target it
        # LoRAs (recipe.loras plus <lora:name:w> prompt tags) are applied for this run only.
        recipe = split_prompt_loras(recipe)
        with applied_loras(self, recipe.loras):
            return self._generate(recipe, init_image, mask, progress, preview)

    def _generate(self, recipe, init_image, mask, progress, preview) -> Result:
        from anima.recipe.settings import Workflow
        from anima.sampling import samplers, schedules
        from anima.workflows import inpaint
        from anima.workflows.init_image import check_image_tensor

        recipe = recipe.with_(
            model=recipe.model or self.model_name, model_hash=recipe.model_hash or self.model_hash
        )
        recipe.validate(samplers.SAMPLERS.keys(), schedules.SCHEDULERS.keys())
        wf = Workflow.from_recipe(recipe).validate(samplers.SAMPLERS.keys(), schedules.SCHEDULERS.keys())
        if recipe.denoise < 1.0 and init_image is None:
            raise AnimaError("denoise < 1 needs an init image (img2img)")
        hooks = StepHooks(progress, preview)
        if mask is None:
            if init_image is not None:
                init_image = check_image_tensor(init_image, recipe.width, recipe.height)
            return self._run(recipe, wf, init_image, None, hooks)
        if init_image is None:
            raise AnimaError("a mask needs an init image to repaint (--init-image)")
        if wf.hires:
            raise AnimaError("hires fix cannot be combined with a mask; inpaint, then upscale the result")
        image = init_image[None] if init_image.ndim == 3 else init_image
        pixel_mask = inpaint.prepare_mask(
            inpaint.check_mask(mask, image.shape[2], image.shape[1]), wf.mask_grow, wf.mask_blur
        )
        if not wf.only_masked:
            image = check_image_tensor(image, recipe.width, recipe.height)
            return self._run(recipe, wf, image, pixel_mask, hooks)
        # "Only masked": repaint a crop around the mask at the recipe size, paste it back.
        run = lambda img, m: self._run(recipe, wf, img, m, hooks)  # noqa: E731
        result = inpaint.only_masked(
            run, image.float(), pixel_mask, wf.inpaint_padding, recipe.width, recipe.height
        )
        return Result(**result)

    def _run(self, recipe, wf, init_image: torch.Tensor | None, pixel_mask: torch.Tensor | None, hooks):
        """The passes of one image batch: main pass, hires passes, decode, inpaint composite."""
        from anima.model.latent import denormalize_latent, normalize_latent
        from anima.workflows import hires, inpaint
        from anima.workflows.variations import varied_noise

        notes: list[str] = []
        plan = hires.plan_passes(
            recipe.width, recipe.height, wf.hires_scale,
            max_step=wf.hires_max_step, max_side=wf.hires_max_side,
        )  # fmt: skip
        if plan.sizes:
            notes.append(plan.describe())
            log.info("%s", notes[-1])
        main = SamplingPass(recipe.steps, recipe.denoise, recipe.sampler, recipe.scheduler)
        second = SamplingPass(
            wf.hires_steps or recipe.steps, wf.hires_denoise, wf.hires_sampler or recipe.sampler,
            wf.hires_scheduler or recipe.scheduler,
        )  # fmt: skip
        passes = [main] + [second] * len(plan.sizes)
        hooks.total = sum(p.num_steps(recipe.shift) for p in passes)

        b, h, w = recipe.batch_size, recipe.height // 8, recipe.width // 8
        if init_image is not None:
            latent = normalize_latent(self.encode_image(init_image, tiled=wf.tiled_vae)).float()
            inpaint.ensure_finite(latent, "the encoded init image")
            latent = latent.expand(b, -1, -1, -1, -1)
        else:
            latent = torch.zeros(b, 16, 1, h, w)
        noise = varied_noise(recipe.seed, tuple(latent.shape), wf.variation_seed, wf.variation_strength)
        lmask = inpaint.latent_mask(pixel_mask, h, w) if pixel_mask is not None else None
        contexts: dict[str, torch.Tensor] = {}  # prompt text -> context, shared by all passes
        x = self._sample(recipe, wf, main, latent, noise, lmask, hooks, contexts, first=True)
        for width, height in plan.sizes:
            if wf.hires_upscaler == "lanczos":
                from anima.workflows.resample import resize_images

                pixels = self.decode_latent(denormalize_latent(x), tiled=wf.tiled_vae)
                pixels = resize_images(pixels, width, height, "lanczos")
                latent = normalize_latent(self.encode_image(pixels, tiled=wf.tiled_vae)).float()
            else:
                latent = hires.upscale_latent(x, height // 8, width // 8, wf.hires_upscaler)
            noise = varied_noise(recipe.seed, tuple(latent.shape), wf.variation_seed, wf.variation_strength)
            x = self._sample(recipe, wf, second, latent, noise, None, hooks, contexts, first=False)
        images = self.decode_latent(denormalize_latent(x), tiled=wf.tiled_vae)
        inpaint.ensure_finite(images, "the decoded image")
        if pixel_mask is not None:
            images = inpaint.composite(images, init_image, pixel_mask)
        return Result(images=images, latents=x.cpu(), recipes=[recipe] * b, notes=notes)

    def _sample(self, recipe, wf, spec: SamplingPass, latent, noise, lmask, hooks, contexts, *, first: bool):
        """One sampling pass from `latent` (model space) at `spec`'s steps, denoise and sampler."""
        from anima.sampling import samplers, schedules
        from anima.sampling.denoiser import make_denoiser
        from anima.sampling.guidance import GuidanceConfig, Guider
        from anima.text.prompt_editing import prompts_per_step
        from anima.workflows.inpaint import masked_denoiser
        from anima.workflows.nag import NagControl, nag_attention

        model_sampling = schedules.FlowModelSampling(shift=recipe.shift)
        sigmas = spec.sigmas(recipe.shift)
        n = len(sigmas) - 1
        pos = self._contexts(prompts_per_step(recipe.prompt, n), contexts)
        neg = self._contexts(prompts_per_step(recipe.negative_prompt, n), contexts)
        self._after_text_encoding()
        guider = Guider(
            GuidanceConfig(
                wf.guidance, recipe.cfg, wf.cfg_rescale, wf.apg_eta, wf.apg_momentum, wf.apg_norm_threshold
            )
        )
        nag = NagControl(wf.nag_scale, wf.nag_tau, wf.nag_alpha) if wf.nag else None
        zero_init = wf.cfg_zero_init_steps if first and wf.guidance == "cfg-zero-star" else 0
        # per pass: K/V, step cache
        model_x0 = functools.partial(self._model_x0, run=self._run_caches(), nag=nag)
        denoise = make_denoiser(
            model_x0, pos=pos, neg=neg, sigmas=sigmas, guider=guider, attention_guidance=nag is not None,
            zero_init_steps=zero_init,
        )  # fmt: skip
        # The sampling state lives with the DiT: on a GPU, no host round trip (and no host-side
        # sampler arithmetic with the GPU idle) per step. Noise is still drawn on the CPU (seeds).
        dev = torch.device(self.device)
        latent, noise = latent.to(dev), noise.to(dev)
        if lmask is not None:
            denoise = masked_denoiser(denoise, latent, noise, lmask.to(dev))
        s0 = sigmas[0]
        x = s0 * noise + (1.0 - s0) * latent  # flow-matching noise scaling (spec 2.9)
        step_noise = samplers.noise_source_for(spec.sampler, x, sigmas, recipe.seed)
        offset = hooks.done
        sampler = samplers.SAMPLERS[spec.sampler]
        with nag_attention(self.dit, nag) if nag is not None else contextlib.nullcontext():
            x = sampler(
                denoise, x, sigmas, noise=step_noise, model_sampling=model_sampling,
                callback=lambda i, _x, x0, _sigma: hooks.step(offset + i, x0),
            )  # fmt: skip
        hooks.done = offset + n
        return x

    # ---------------------------------------------------------------- parts
    def _contexts(self, prompts: list[str], cache: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """One DiT context per prompt (on the device, compute dtype); each distinct text encoded once
        per run (`cache` maps texts already encoded in this run to their contexts)."""
        new = [p for p in dict.fromkeys(prompts) if p not in cache]
        if new:
            from anima.runtime.memory import ensure_text_encoder

            ensure_text_encoder(self)  # reloads it if a memory plan released it
        for p, c in zip(new, self.conditioner.encode_many(new), strict=True):
            cache[p] = c.context.to(self.device, self.dtype)
        return [cache[p] for p in prompts]

    def _model_x0(self, x, sigma, ctx, negative=None, *, run=None, nag=None) -> torch.Tensor:
        """The DiT as an x0 predictor: x0 = x - sigma * v in fp32, on x's device. `run`: `RunCaches`;
        `negative`: NAG's negative context for this (cond) forward."""
        kw = run.kwargs(ctx) if run is not None else {}
        args = (x.to(self.device, self.dtype), sigma.to(self.device, torch.float32), ctx)
        if negative is not None:
            with nag.guiding(negative):
                v = self.dit(*args, **kw)
        else:
            v = self.dit(*args, **kw)
        return x - v.float().to(x.device) * sigma.to(x.device).view(-1, 1, 1, 1, 1)

    def _run_caches(self):
        """Cross-attention K/V computed once per context and pass (exact), plus the opt-in step cache."""
        from anima.model.dit_cache import FirstBlockCache, RunCaches

        step = FirstBlockCache(threshold=self.step_cache) if self.step_cache else None
        return RunCaches(self.dit, step_cache=step)

    def _after_text_encoding(self) -> None:
        """Under a memory plan that says so, free the text encoder before the DiT runs."""
        if self.memory_plan is not None and self.memory_plan.release_text_encoder:
            from anima.runtime.memory import release_text_encoder

            release_text_encoder(self)

    @torch.inference_mode()
    def encode_image(self, image: torch.Tensor, *, tiled: str = "auto") -> torch.Tensor:
        """[B,H,W,3] in [0,1] -> VAE-space latent mean [B,16,1,H/8,W/8] (fp32, CPU)."""
        from anima.model.vae import image_to_vae_input
        from anima.workflows.tiled_vae import encode_tiled

        vdt = next(self.vae.parameters()).dtype
        x = image_to_vae_input(image).to(self.device, vdt)
        if self._tile(tiled, image.shape[1], image.shape[2], image.shape[0], vdt):
            return encode_tiled(self.vae.encode, x).float().cpu()
        return self.vae.encode(x).float().cpu()

    @torch.inference_mode()
    def decode_latent(self, latent: torch.Tensor, *, tiled: str = "auto") -> torch.Tensor:
        """VAE-space latent -> images [B,H,W,3] float32 in [0,1]. `tiled`: auto, on or off."""
        from anima.model.vae import vae_output_to_image

        vdt = next(self.vae.parameters()).dtype
        z = latent.to(self.device, vdt)
        f = self.vae.spatial_factor
        if self._tile(tiled, z.shape[-2] * f, z.shape[-1] * f, z.shape[0], vdt):
            out = self.vae.decode_tiled(z)
        else:
            out = self.vae.decode(z)
        return vae_output_to_image(out).float().cpu()

    def _tile(self, mode: str, height: int, width: int, batch: int, dtype: torch.dtype) -> bool:
        from anima.workflows.tiled_vae import free_memory, should_tile

        budget = free_memory(self.device) if mode == "auto" else None
        if mode == "auto" and self.memory_plan is not None and self.memory_plan.vae_budget is not None:
            budget = min(budget or self.memory_plan.vae_budget, self.memory_plan.vae_budget)
        return should_tile(mode, height, width, self.vae.cfg.dim, dtype, budget, batch)


def _tokenizer_dirs(
    tokenizer_dir: str | Path | None, qwen: str | Path | None, t5: str | Path | None
) -> tuple[Path, Path]:
    if tokenizer_dir is not None:
        base = Path(tokenizer_dir)
        qwen = qwen or base / "qwen"
        t5 = t5 or base / "t5"
    if qwen is None or t5 is None:
        raise AnimaError(
            "no tokenizers given: pass --tokenizer-dir (a folder with qwen/ and t5/), "
            "a diffusers folder, or run `anima models download`"
        )
    return Path(qwen), Path(t5)
