"""The one place that orchestrates: prompt -> conditioning -> sampling -> VAE -> images.

Everything numerical lives elsewhere (model/, sampling/, workflows/); a `Pipeline` holds the
loaded models, decides where each part lives and in which dtype (from its `RunOptions`, applied
once in the constructor), and records one `Recipe` for every image so it can be reproduced.
The passes of one image batch (main pass, hires passes, decode, inpaint composite) are in
`anima.pipeline.passes`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path

import torch
from torch import nn

from anima.errors import AnimaError
from anima.lora.use import applied_loras, split_prompt_loras
from anima.model.vae import image_to_vae_input, vae_output_to_image
from anima.pipeline import passes, placement
from anima.pipeline.controls import applied_controls, recorded_controls
from anima.pipeline.options import RunOptions
from anima.pipeline.result import Result
from anima.recipe import SETTINGS, Recipe
from anima.runtime.cpu_gemm import cpu_products
from anima.runtime.precision import SHORT_NAMES, parse_dtype, resolve_dtype
from anima.runtime.profile import maybe_profiled
from anima.runtime.quant import cast_unquantized, matmul_record
from anima.text.conditioning import TextConditioner
from anima.text.recent_contexts import RecentContexts, weights_state
from anima.text.tokenize import AnimaTokenizer
from anima.weights import loading
from anima.weights.discovery import ModelSet
from anima.weights.hashes import model_hash
from anima.weights.lllite import load_lllite
from anima.weights.mapped_pages import released_after_use, reused_heap, trim_heap
from anima.weights.readahead import read_ahead
from anima.workflows import comfy_image, inpaint
from anima.workflows.control_sources import ControlImage
from anima.workflows.init_image import check_image_tensor, file_digest
from anima.workflows.reference import load_reference
from anima.workflows.tiled_vae import encode_tiled, free_memory, should_tile
from anima.workflows.upscale_model import UpscaleModel

log = logging.getLogger(__name__)


def cpu_run_policy(cpu_gemm: str = "auto") -> AbstractContextManager:
    """What a recipe runs inside on a CPU (and the benchmark times anima's steps in): freed
    activations kept in the heap (`reused_heap`), fp32 linears and attention in the faster library
    (`cpu_products`)."""
    stack = ExitStack()
    stack.enter_context(reused_heap())
    stack.enter_context(cpu_products(cpu_gemm))
    return stack

Progress = Callable[[int, int], None]  # progress(step, total): the CLI's bar, the server's /progress
Preview = Callable[[int, int, torch.Tensor], None]  # preview(step, total, x0): live previews
TextEncoderLoader = Callable[[torch.device], nn.Module]


class Pipeline:
    """Loaded Anima models plus the policy for running them.

    Build with `load` (a resolved `ModelSet`), `from_files` (the three ComfyUI files) or
    `from_pretrained` (a diffusers folder); call with a prompt or `generate` a `Recipe`.
    `text_encoder_loader(device)` reloads the text encoder after a memory plan released it.
    """

    def __init__(
        self,
        *,
        dit: nn.Module,
        adapter: nn.Module,
        text_encoder: nn.Module,
        tokenizer: AnimaTokenizer,
        vae: nn.Module,
        options: RunOptions | None = None,
        model_name: str = "",
        model_hash: str = "",
        text_encoder_loader: TextEncoderLoader | None = None,
    ) -> None:
        self.options = options = options or RunOptions()
        self.device = torch.device(options.device)
        self.dtype = resolve_dtype(options.dtype, self.device)
        self.dit, self.adapter, self.text_encoder, self.vae = dit, adapter, text_encoder, vae
        self.tokenizer = tokenizer
        self.model_name, self.model_hash = model_name, model_hash
        self._text_encoder_loader = text_encoder_loader
        self._te_device = self.device  # where the text encoder runs (a plan may keep it on the host)
        self.conditioner = TextConditioner(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            adapter=adapter,
            device=self.device,
            dtype=self.dtype,
        )
        # What the options decided (memory plan, 8-bit savings, compile warm-up), for the front ends.
        self.notes: list[str] = []
        self._patches: dict[tuple, nn.Module] = {}  # loaded control patches (`control_patch`)
        self._recent = RecentContexts()  # the last text-encoder passes (`encode_contexts`)
        self.memory_plan, self._streamer = placement.prepare(self, self.notes)
        self._upscalers: dict[Path, UpscaleModel] = {}  # loaded once per pipeline, on its device
        self.weights_matmul = matmul_record(self.dit, self.device)  # stamped into every recipe
        self._remember_text_weights()  # as placed and cast

    # ---------------------------------------------------------------- construction
    @classmethod
    def load(
        cls, models: ModelSet, options: RunOptions | None = None, *, model_hash_value: str | None = None
    ):
        """The one constructor from files: a resolved model set (split files or a diffusers folder).

        With a memory budget on a GPU the weights load on the host first, and the plan then moves
        what fits (nothing is copied twice)."""
        options = options or RunOptions()
        device = torch.device(options.device)
        dtype = resolve_dtype(options.dtype, device)
        vae_dtype = resolve_dtype(options.vae_dtype or dtype, device)
        load_device = placement.load_device(options, device)
        # 8-bit weights: the DiT stays in its file's dtype (memory-mapped) until `placement.prepare`
        # quantises it layer by layer and casts the rest, so no full compute-dtype copy ever exists.
        # So does a CPU run under a RAM budget: its plan decides which blocks are cast.
        cpu_plan = options.ram_budget is not None and device.type == "cpu"
        dit_dtype = None if options.weights or cpu_plan else dtype
        tok = AnimaTokenizer.from_dirs(*_tokenizer_dirs(models))
        # The encoder's file is read from disk while the DiT loads, not by the first text pass.
        read_ahead([Path(models.text_encoder)])
        if models.diffusers is not None:
            folder = Path(models.diffusers)
            dit, adapter = loading.load_dit_diffusers(
                folder / "transformer", folder / "text_conditioner", device=load_device, dtype=dit_dtype
            )
            hashed = folder / "transformer"
        else:
            dit, adapter = loading.load_dit(models.dit, device=load_device, dtype=dit_dtype)
            hashed = Path(models.dit)
        cast_unquantized(adapter, dtype)  # in place, the file's mapped pages given back (0.25 GB)
        te_path = Path(models.text_encoder)
        vae = loading.load_vae(models.vae, device=load_device, dtype=vae_dtype)
        return cls(
            dit=dit, adapter=adapter, text_encoder=loading.load_text_encoder(te_path, device=load_device),
            tokenizer=tok, vae=vae, options=options, model_name=models.name,
            model_hash=model_hash_value or model_hash(hashed, options.hash_cache),
            text_encoder_loader=lambda dev: loading.load_text_encoder(te_path, device=dev),
        )  # fmt: skip

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
        options: RunOptions | None = None,
        **option_fields,
    ) -> Pipeline:
        """Load the three ComfyUI split files. Tokenizers: a folder with qwen/ and t5/, or each.
        `option_fields` are `RunOptions` fields (``device="cuda"``, ``dtype="bf16"``)."""
        if tokenizer_dir is not None:
            qwen_tokenizer = qwen_tokenizer or Path(tokenizer_dir) / "qwen"
            t5_tokenizer = t5_tokenizer or Path(tokenizer_dir) / "t5"
        models = ModelSet(Path(dit).stem, Path(dit), Path(text_encoder), Path(vae),
                          _opt_path(qwen_tokenizer), _opt_path(t5_tokenizer), "explicit")  # fmt: skip
        return cls.load(models, _options(options, option_fields))

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, *, options: RunOptions | None = None, **option_fields
    ) -> Pipeline:
        """Load a diffusers-format Anima folder (transformer/, text_conditioner/, text_encoder/,
        tokenizer/, t5_tokenizer/, vae/)."""
        folder = Path(folder)
        for sub in ("transformer", "text_conditioner", "text_encoder", "tokenizer", "t5_tokenizer", "vae"):
            if not (folder / sub).is_dir():
                raise AnimaError(f"{folder}: not a diffusers Anima folder (no {sub}/ inside)")
        models = ModelSet(folder.name, folder / "transformer", folder / "text_encoder", folder / "vae",
                          folder / "tokenizer", folder / "t5_tokenizer", "explicit", folder)  # fmt: skip
        return cls.load(models, _options(options, option_fields))

    # ---------------------------------------------------------------- placement
    @property
    def block_streamer(self):
        """The `BlockStreamer` moving DiT blocks to the device, when the memory plan streams them."""
        return self._streamer

    def place(
        self,
        device: torch.device,
        *,
        text_encoder_device: torch.device | None = None,
        keep_blocks_on_host: bool = False,
    ) -> None:
        """Move the parts to `device` (the text encoder to `text_encoder_device` if given; the DiT
        blocks stay where they are with `keep_blocks_on_host`, for streaming). The one method that
        changes where the pipeline computes; `anima.pipeline.placement` decides the arguments."""
        self.device = torch.device(device)
        self._te_device = torch.device(text_encoder_device or self.device)
        self.conditioner.move_to(self.device)
        for part in (self.adapter, self.vae):
            part.to(self.device)
        if self.text_encoder is not None:
            self.text_encoder.to(self._te_device)
        for name, child in self.dit.named_children():
            if name != "blocks" or not keep_blocks_on_host:
                child.to(self.device)
        self._remember_text_weights()  # the same weights, elsewhere

    def _remember_text_weights(self) -> None:
        """Note the adapter and text encoder as they are now, the state kept passes need (`_text_state`)."""
        self._recent.clear()
        self._adapter_state = weights_state(self.adapter)
        self._te_state = None if self.text_encoder is None else weights_state(self.text_encoder)

    def release_text_encoder(self) -> bool:
        """Free the text encoder (it is reloaded when a prompt needs encoding again). False when this
        pipeline cannot reload it (built from modules without a loader)."""
        if self._text_encoder_loader is None or self.text_encoder is None:
            return False
        self.text_encoder = None
        self.conditioner.detach_text_encoder()
        trim_heap()  # the encoding's activations and cast buffers go back to the system too
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return True

    def ensure_text_encoder(self) -> None:
        """Load the text encoder again if it was released (a no-op when it is there)."""
        if self.text_encoder is not None:
            return
        if self._text_encoder_loader is None:
            raise AnimaError("the text encoder was released and this pipeline cannot reload it")
        self.text_encoder = self._text_encoder_loader(self._te_device)
        self._te_state = weights_state(self.text_encoder)
        self.conditioner.attach_text_encoder(self.text_encoder)

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
        """``pipe("1girl, ...", steps=20, seed=1, hires_scale=1.5)``: any recipe field or flat
        setting (`anima.recipe.SETTINGS`) as a keyword."""
        unknown = [k for k in settings if k not in SETTINGS and k not in Recipe.__dataclass_fields__]
        if unknown:
            raise AnimaError(f"unknown recipe field {unknown[0]!r}")
        return self.generate(
            Recipe.make(prompt, **settings), init_image=init_image, mask=mask, progress=progress
        )

    def generate(
        self,
        recipe: Recipe,
        *,
        init_image: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        progress: Progress | None = None,
        preview: Preview | None = None,
        reference: torch.Tensor | None = None,
        controls: Sequence[ControlImage] | None = None,
    ) -> Result:
        """Run one recipe.

        `init_image` ([1,H,W,3] in [0,1]) makes it img2img at recipe.denoise; `mask` ([1,H,W] in
        [0,1], white = repaint, the init image's size) makes it inpainting. `progress(step, total)`
        counts the steps of all passes; `preview(step, total, x0)` sees each step's denoised latent
        (normalized), for live previews. `reference` ([1,H,W,3]) is the image of reference editing;
        without it a recipe's recorded reference image is loaded (and its digest checked).
        `controls` (one `ControlImage` per recipe control unit) replace the control images the
        units name (which are loaded from their paths otherwise).
        """
        if not isinstance(recipe, Recipe):
            raise AnimaError(f"generate takes a Recipe, got {type(recipe).__name__}")
        recipe.validate()  # samplers and schedulers anima runs (every other value was checked when made)
        recipe = self.record(split_prompt_loras(recipe))  # <lora:name:w> prompt tags -> recipe.loras
        if recipe.loras or recipe.comfy.clip_loras:
            self.ensure_text_encoder()  # a memory plan may have released it; LoRAs may target it
        opts = self.options
        with (
            applied_loras(
                self, recipe.loras, resolve=opts.lora_resolver, merge=opts.merge_loras,
                key_rule=recipe.comfy.lora_keys, clip=recipe.comfy.clip_loras,
            ) as loras,
            applied_controls(self, recipe, controls) as (control, notes),
        ):  # fmt: skip
            if reference is None and recipe.reference.on:
                reference = load_reference(recipe.reference)
            # On a CPU the ops' fresh outputs come from kept heap instead of new pages (mapped_pages),
            # and fp32 linears and attention go to the faster library (anima.runtime.cpu_gemm).
            with self._cpu_run():
                result = self._generate(
                    recipe, init_image, mask, passes.StepHooks(progress, preview), reference, control
                )
        result.notes[:0] = notes
        if loras is not None:
            result.notes.extend(loras.notes)
        return result

    def _cpu_run(self) -> AbstractContextManager:
        return cpu_run_policy(self.options.cpu_gemm) if self.device.type == "cpu" else nullcontext()

    def record(self, recipe: Recipe) -> Recipe:
        """The recipe as this pipeline runs it: its model, hash, dtype and 8-bit weights stamped in.

        The one place a recorded recipe is made; unchanged (the same object) when it already says so."""
        stamp = {
            "model": recipe.model or self.model_name,
            "model_hash": recipe.model_hash or self.model_hash,
            "dtype": SHORT_NAMES[self.dtype],
        }
        perf = recipe.perf.with_(
            weights=self.options.weights,
            weights_matmul=self.weights_matmul,
            fp16_accumulation=self.options.fp16_accumulation,
        )
        hires = recipe.hires
        if hires.on and hires.uses_model and not hires.upscaler_hash:  # the file that ran, by digest
            hires = hires.with_(upscaler_hash=file_digest(self.upscaler_path(hires.upscaler)))
        controls = recorded_controls(recipe.controls, self.options.control_resolver)
        same = (perf, hires, controls) == (recipe.perf, recipe.hires, recipe.controls)
        if same and all(getattr(recipe, k) == v for k, v in stamp.items()):
            return recipe
        return recipe.with_(**stamp, perf=perf, hires=hires, controls=controls)

    def _generate(
        self, recipe: Recipe, init_image, mask, hooks: passes.StepHooks, reference=None, control=None
    ) -> Result:
        if control is not None and reference is not None:
            # Both extend what the DiT sees (a second frame; patched projections per token of one
            # frame): their combination is not defined by any reference implementation yet.
            raise AnimaError("control patches and reference editing cannot be combined", setting="reference")
        if recipe.denoise < 1.0 and init_image is None:
            raise AnimaError("denoise < 1 needs an init image (img2img)")
        if mask is None:
            if init_image is not None:
                init_image = check_image_tensor(init_image, recipe.width, recipe.height)
            return passes.run(self, recipe, init_image, None, hooks, reference, control)
        if init_image is None:
            raise AnimaError("a mask needs an init image to repaint")
        if recipe.comfy.noise_mask:  # SetLatentNoiseMask: the mask as given, any size, no feathering
            image = check_image_tensor(init_image, recipe.width, recipe.height)
            return passes.run(
                self, recipe, image, comfy_image.check_noise_mask(mask), hooks, reference, control
            )
        if recipe.hires.on:
            raise AnimaError("hires fix cannot be combined with a mask; inpaint, then upscale the result")
        image = init_image[None] if init_image.ndim == 3 else init_image
        pixel_mask = inpaint.prepare_mask(
            inpaint.check_mask(mask, image.shape[2], image.shape[1]),
            recipe.inpaint.mask_grow,
            recipe.inpaint.mask_blur,
        )
        if not recipe.inpaint.only_masked:
            image = check_image_tensor(image, recipe.width, recipe.height)
            return passes.run(self, recipe, image, pixel_mask, hooks, reference, control)
        if control is not None:
            raise AnimaError("control patches apply to the whole image; use whole-image inpainting with them",
                             setting="inpaint_area")  # fmt: skip
        # "Only masked": repaint a crop around the mask at the recipe size, paste it back.
        result = inpaint.only_masked(
            lambda img, m: passes.run(self, recipe, img, m, hooks, reference), image.float(), pixel_mask,
            recipe.inpaint.padding, recipe.width, recipe.height,
        )  # fmt: skip
        return Result(**result)

    # ---------------------------------------------------------------- parts
    def upscaler_path(self, name: str) -> Path:
        """The file of upscaler model `name`: the options' resolver's answer, else `name` as a path."""
        resolve = self.options.upscaler_resolver
        path = Path(resolve(name)) if resolve is not None else Path(name)
        if not path.is_file():
            raise AnimaError(
                f"upscaler model {name!r} not found; give a path or a file in models/upscale_models/",
                setting="hires_upscaler",
            )
        return path

    def upscaler(self, name: str, expected_hash: str = "") -> UpscaleModel:
        """Upscaler model `name` on this pipeline's device, loaded once; `expected_hash` (a recorded
        digest) refuses a file that has changed since the recipe was made."""
        path = self.upscaler_path(name).resolve()
        if expected_hash and file_digest(path) != expected_hash:
            raise AnimaError(
                f"upscaler model {path.name} has changed since the recipe was made (digest differs)",
                setting="hires_upscaler",
            )
        if path not in self._upscalers:
            self._upscalers[path] = UpscaleModel.load(path).to(self.device)
        return self._upscalers[path]

    def control_patch(self, path: Path) -> nn.Module:
        """The LLLite patch at `path`, loaded for this DiT (checked against its depth and width) on
        the device in the compute dtype; the last few stay loaded, so a batch or a server loads each
        patch once, and a file changed on disk is loaded again."""
        st = Path(path).stat()
        key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, str(self.device), self.dtype)
        if key not in self._patches:
            if len(self._patches) >= 4:
                self._patches.pop(next(iter(self._patches)))
            self._patches[key] = load_lllite(path, dit=self.dit.cfg, device=self.device, dtype=self.dtype)
        return self._patches[key]

    def contexts(
        self, prompts: list[str], cache: dict, *, zeroed: bool = False
    ) -> list[torch.Tensor]:
        """One DiT context per prompt (on the device, compute dtype); each distinct text encoded once
        per run (`cache` maps texts already encoded in this run to their contexts). `zeroed`: with
        the Qwen3 states zeroed (ComfyUI's ConditioningZeroOut), cached apart from the plain ones."""
        self.encode_contexts([(p, zeroed) for p in prompts], cache)
        return [cache[_context_key(p, zeroed)] for p in prompts]

    def encode_contexts(self, requests: Sequence[tuple[str, bool]], cache: dict) -> None:
        """Put the context of every (prompt, zeroed) request that `cache` lacks into it, encoding
        them all in one text-encoder pass: the positive, negative and region prompts of a run
        together cost one pass instead of one each (on a CPU the pass reads every weight)."""
        new = [r for r in dict.fromkeys(requests) if _context_key(*r) not in cache]
        if not new:
            return
        state = self._text_state()  # the same pass under the same weights: kept from a recent run
        contexts = None if state is None else self._recent.get(state, new)
        if contexts is None:
            self.ensure_text_encoder()
            # An encoder freed after encoding need not stay resident while it runs either.
            freed = self.memory_plan.release_text_encoder and self._text_encoder_loader is not None
            with released_after_use(self.text_encoder.layers if freed else ()):
                encoded = self.conditioner.encode_requests(new)
            contexts = [c.context.to(self.device, self.dtype) for c in encoded]
            if state is not None:
                self._recent.put(state, new, contexts)
        for r, c in zip(new, contexts, strict=True):
            cache[_context_key(*r)] = c

    def _text_state(self) -> tuple | None:
        """What a text-encoder pass's contexts depend on besides its prompts (`RecentContexts`), or
        None while the adapter or the encoder is not as it was loaded (a LoRA wrapped or merged into
        it, training): such passes are neither reused nor kept. A released encoder is reloaded from
        its file, so it counts as unchanged."""
        te = self.text_encoder
        if te is not None and weights_state(te) != self._te_state:
            return None
        if weights_state(self.adapter) != self._adapter_state:
            return None
        return (self.device, self.dtype)

    def after_text_encoding(self) -> None:
        """Under a plan that says so, free the text encoder before the DiT runs."""
        if self.memory_plan.release_text_encoder:
            self.release_text_encoder()

    @torch.inference_mode()
    def encode_image(self, image: torch.Tensor, *, tiled: str = "auto") -> torch.Tensor:
        """[B,H,W,3] in [0,1] -> VAE-space latent mean [B,16,1,H/8,W/8] (fp32, CPU)."""
        vdt = next(self.vae.parameters()).dtype
        x = image_to_vae_input(image).to(self.device, vdt)
        with self._cpu_run():  # the products `generate` uses, so both give the same latent
            if self._tile(tiled, image.shape[1], image.shape[2], image.shape[0], vdt):
                return encode_tiled(self.vae.encode, x).float().cpu()
            return self.vae.encode(x).float().cpu()

    @torch.inference_mode()
    def decode_latent(self, latent: torch.Tensor, *, tiled: str = "auto") -> torch.Tensor:
        """VAE-space latent -> images [B,H,W,3] float32 in [0,1]. `tiled`: auto, on or off."""
        vdt = next(self.vae.parameters()).dtype
        z = latent.to(self.device, vdt)
        f = self.vae.spatial_factor
        with self._cpu_run():
            if self._tile(tiled, z.shape[-2] * f, z.shape[-1] * f, z.shape[0], vdt):
                out = self.vae.decode_tiled(z)
            else:
                out = self.vae.decode(z)
        return vae_output_to_image(out).float().cpu()

    def _tile(self, mode: str, height: int, width: int, batch: int, dtype: torch.dtype) -> bool:
        budget = free_memory(self.device) if mode == "auto" else None
        plan_budget = self.memory_plan.vae_budget
        if mode == "auto" and plan_budget is not None:
            budget = min(budget or plan_budget, plan_budget)
        return should_tile(mode, height, width, self.vae.cfg.dim, dtype, budget, batch)

    def profiled(self, enabled: bool = True):
        """``with pipe.profiled() as prof`` around runs, then ``prof.report()`` (None when not enabled)."""
        return maybe_profiled(self, enabled)


def _opt_path(p: str | Path | None) -> Path | None:
    return None if p is None else Path(p)


def _options(options: RunOptions | None, fields: dict) -> RunOptions:
    """`options`, or RunOptions from keywords (``device=torch.device("cuda")``, ``dtype=torch.bfloat16``
    are accepted as the Python API always took them)."""
    if options is not None and fields:
        raise AnimaError("give either options=RunOptions(...) or option keywords, not both")
    if options is not None:
        return options
    for key in ("dtype", "vae_dtype"):
        if isinstance(fields.get(key), torch.dtype):
            fields[key] = SHORT_NAMES[parse_dtype(fields[key])]
    if isinstance(fields.get("device"), torch.device):
        fields["device"] = str(fields["device"])
    return RunOptions(**fields)


def _tokenizer_dirs(models: ModelSet) -> tuple[Path, Path]:
    if models.qwen_tokenizer is None or models.t5_tokenizer is None:
        raise AnimaError(
            "no tokenizers given: pass a tokenizer folder (with qwen/ and t5/), a diffusers folder, "
            "or run `anima models download --tokenizers-only`"
        )
    return Path(models.qwen_tokenizer), Path(models.t5_tokenizer)


def _context_key(prompt: str, zeroed: bool) -> str | tuple[str, str]:
    """The key of a context in a run's cache: zeroed states are cached apart from the plain ones."""
    return ("zeroed", prompt) if zeroed else prompt
