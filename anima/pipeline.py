"""The one place that orchestrates: prompt -> conditioning -> sampling -> VAE -> images.

Everything numerical lives elsewhere (model/, samplers, schedules, guidance); this module only
decides which device and dtype each part runs in and in what order, and records a Recipe for
every image so it can be reproduced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from anima import guidance
from anima.errors import AnimaError
from anima.precision import resolve_dtype

log = logging.getLogger(__name__)

# progress(step, total) -> None; the CLI turns it into a bar, the server into /progress.
Progress = Callable[[int, int], None]


@dataclass
class Result:
    """Images of one run: float [B,H,W,3] in [0,1], their 8-bit versions, latents and recipes."""

    images: torch.Tensor
    latents: torch.Tensor
    recipes: list = field(default_factory=list)

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
        from anima.conditioning import TextConditioner

        self.dit = dit
        self.adapter = adapter
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.vae = vae
        self.device = device
        self.dtype = dtype
        self.model_name = model_name
        self.model_hash = model_hash
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
    ) -> Pipeline:
        """Load the three ComfyUI split files. Tokenizers: a folder with qwen/ and t5/, or each."""
        from anima import loading
        from anima.tokenize import AnimaTokenizer

        device = torch.device(device)
        dt = resolve_dtype(dtype, device)
        qwen_dir, t5_dir = _tokenizer_dirs(tokenizer_dir, qwen_tokenizer, t5_tokenizer)
        tok = AnimaTokenizer.from_dirs(qwen_dir, t5_dir)
        d, a = loading.load_dit(dit, device=device, dtype=dt)
        te = loading.load_text_encoder(text_encoder, device=device)
        v = loading.load_vae(vae, device=device, dtype=resolve_dtype(vae_dtype or dt, device))
        name = Path(dit).stem
        return cls(
            dit=d, adapter=a, text_encoder=te, tokenizer=tok, vae=v, device=device, dtype=dt,
            model_name=name, model_hash=_short_hash(Path(dit)),
        )  # fmt: skip

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = "auto",
        vae_dtype: str | torch.dtype | None = None,
    ) -> Pipeline:
        """Load a diffusers-format Anima folder (transformer/, text_conditioner/, text_encoder/,
        tokenizer/, t5_tokenizer/, vae/)."""
        from anima import loading
        from anima.tokenize import AnimaTokenizer

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
        return cls(
            dit=d, adapter=a, text_encoder=te, tokenizer=tok, vae=v, device=device, dtype=dt,
            model_name=folder.name, model_hash=_short_hash(folder / "transformer"),
        )  # fmt: skip

    # ---------------------------------------------------------------- running
    def __call__(self, prompt: str = "", *, progress: Progress | None = None, **settings) -> Result:
        """`pipe("1girl, ...", steps=20, seed=1)`: any Recipe field as a keyword."""
        from anima.recipe import Recipe

        recipe = Recipe(prompt=prompt, **settings)
        return self.generate(recipe, progress=progress)

    def generate(
        self,
        recipe,
        *,
        init_image: torch.Tensor | None = None,
        progress: Progress | None = None,
    ) -> Result:
        """Run one recipe. `init_image` ([1,H,W,3] in [0,1]) makes it img2img at recipe.denoise."""
        from anima import samplers, schedules
        from anima.latent import denormalize_latent, normalize_latent
        from anima.noise import initial_noise

        recipe = recipe.with_(
            model=recipe.model or self.model_name, model_hash=recipe.model_hash or self.model_hash
        )
        recipe.validate(samplers.SAMPLERS.keys(), schedules.SCHEDULERS.keys())
        if recipe.denoise < 1.0 and init_image is None:
            raise AnimaError("denoise < 1 needs an init image (img2img)")

        cond = self.conditioner.encode(recipe.prompt)
        uncond = self.conditioner.encode(recipe.negative_prompt)

        h, w = recipe.height // 8, recipe.width // 8
        if init_image is not None:
            latent = normalize_latent(self.encode_image(init_image)).float()
            latent = latent.expand(recipe.batch_size, -1, -1, -1, -1)
        else:
            latent = torch.zeros(recipe.batch_size, 16, 1, h, w)
        noise = initial_noise(recipe.seed, tuple(latent.shape))

        model_sampling = schedules.FlowModelSampling(shift=recipe.shift)
        sampler = samplers.SAMPLERS[recipe.sampler]
        sigmas = schedules.get_sigmas(
            model_sampling,
            recipe.scheduler,
            recipe.steps,
            denoise=recipe.denoise,
            discard_penultimate=samplers.discards_penultimate(recipe.sampler),
        )
        s0 = sigmas[0]
        x = s0 * noise + (1.0 - s0) * latent  # flow-matching noise scaling (spec 2.9)
        denoise_fn = self._denoiser(cond.context, uncond.context, recipe.cfg, recipe.batch_size)
        step_noise = samplers.noise_source_for(recipe.sampler, x, sigmas, recipe.seed)

        total = len(sigmas) - 1

        def on_step(i: int, x_i: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> None:
            # Stop at the first non-finite step instead of writing a black image at the end.
            if not torch.isfinite(x0).all():
                raise AnimaError(
                    f"the prediction became NaN/inf at step {i + 1}; "
                    "use --dtype bf16 or fp32 (fp16 overflow) or a lower CFG"
                )
            if progress is not None:
                progress(i + 1, total)

        x = sampler(denoise_fn, x, sigmas, noise=step_noise, callback=on_step, model_sampling=model_sampling)
        images = self.decode_latent(denormalize_latent(x))
        recipes = [recipe] * recipe.batch_size
        return Result(images=images, latents=x, recipes=recipes)

    # ---------------------------------------------------------------- parts
    def _denoiser(self, ctx_pos: torch.Tensor, ctx_neg: torch.Tensor, scale: float, batch: int):
        """denoise(x, sigma) -> x0 with CFG, hiding the model from the sampler."""
        dit, dev, dt = self.dit, self.device, self.dtype
        pos = ctx_pos.to(dev, dt).expand(batch, -1, -1)
        neg = ctx_neg.to(dev, dt).expand(batch, -1, -1)
        use_uncond = guidance.needs_uncond(scale)
        same_len = pos.shape[1] == neg.shape[1]

        def model_x0(x: torch.Tensor, sigma: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
            v = dit(x.to(dev, dt), sigma.to(dev, torch.float32), ctx).float().cpu()
            return x - v * sigma.view(-1, 1, 1, 1, 1)

        @torch.inference_mode()
        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma
            if not use_uncond:
                return model_x0(x, sigma, pos)
            if same_len:
                # cond and uncond in one forward: one weight pass over memory instead of two.
                both = model_x0(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([pos, neg]))
                c, u = both.chunk(2)
            else:
                c, u = model_x0(x, sigma, pos), model_x0(x, sigma, neg)
            return guidance.cfg(c, u, scale)

        return denoise

    @torch.inference_mode()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """[B,H,W,3] in [0,1] -> VAE-space latent mean [B,16,1,H/8,W/8] (fp32, CPU)."""
        from anima.model.vae import image_to_vae_input

        vdt = next(self.vae.parameters()).dtype
        x = image_to_vae_input(image).to(self.device, vdt)
        return self.vae.encode(x).float().cpu()

    @torch.inference_mode()
    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """VAE-space latent -> images [B,H,W,3] float32 in [0,1]."""
        from anima.model.vae import vae_output_to_image

        vdt = next(self.vae.parameters()).dtype
        out = self.vae.decode(latent.to(self.device, vdt))
        return vae_output_to_image(out).float().cpu()


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


def _short_hash(path: Path) -> str:
    """A cheap, stable id for the model: sha256 of the safetensors header (A1111 hashes data;
    a header hash is instant and still changes whenever any tensor's layout does)."""
    import hashlib

    from anima.loading import shard_files

    h = hashlib.sha256()
    for f in shard_files(path):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            h.update(fh.read(min(n, 100 * 1024 * 1024)))
    return h.hexdigest()[:10]
