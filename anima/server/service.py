"""The generation service: which models exist, which one is loaded, and running one recipe.

Routes and the worker talk to a `GenerationService`; `PipelineService` is the real one, wrapping
`anima.pipeline.Pipeline`. Tests build it from the tiny fixture files with `from_files`; another
implementation (a remote GPU, a fake) only has to provide the same methods.

Only the worker thread calls `run`, so at most one model is loaded and used at a time;
`select_model` just records a name that the next `run` loads.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from anima import demo
from anima.errors import AnimaError
from anima.lora.file import check_lora
from anima.model.latent import preview_rgb
from anima.pipeline import Pipeline, RunOptions
from anima.recipe import Recipe
from anima.recipe.model_defaults import defaults_for
from anima.sampling import samplers, schedules
from anima.server.security import check_plain_name
from anima.weights.discovery import ModelSet
from anima.weights.upscale_models import SUFFIXES as UPSCALER_SUFFIXES
from anima.weights.upscale_models import UPSCALER_FOLDERS

log = logging.getLogger(__name__)

StepFn = Callable[[int, int], None]
PreviewFn = Callable[[int, int, object], None]  # (step, total, uint8 [H,W,3] array)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    filename: str
    hash: str | None
    demo: bool = False
    defaults: dict = field(default_factory=dict)  # recipe fields and flat settings (`defaults_for`)


class GenerationService(Protocol):
    def models(self) -> list[ModelInfo]: ...
    def current_model(self) -> str: ...
    def select_model(self, name: str) -> str: ...
    def loras(self) -> dict[str, Path]: ...
    def resolve_lora(self, name: str) -> Path: ...
    def upscalers(self) -> dict[str, Path]: ...
    def resolve_upscaler(self, name: str) -> Path: ...
    def control_patches(self) -> dict[str, Path]: ...
    def resolve_patch(self, name: str) -> Path: ...
    def refresh(self) -> None: ...
    def samplers(self) -> list[str]: ...
    def schedulers(self) -> list[str]: ...
    def run(
        self,
        recipe: Recipe,
        *,
        init_image=None,
        mask=None,
        progress: StepFn | None = None,
        preview: PreviewFn | None = None,
        preview_every: int = 0,
    ) -> tuple[list[tuple[object, Recipe]], list[str]]: ...


@dataclass(frozen=True)
class ServiceSpec:
    """The arguments of a `PipelineService`, without the rescan function (a remote copy is told
    of new models by the server)."""

    models: tuple[ModelSet, ...]
    lora_dirs: tuple[Path, ...] = ()
    options: RunOptions = field(default_factory=RunOptions)
    upscaler_dirs: tuple[Path, ...] = ()
    patch_dirs: tuple[Path, ...] = ()

    def build(self) -> PipelineService:
        return PipelineService(
            self.models, lora_dirs=self.lora_dirs, options=self.options,
            upscaler_dirs=self.upscaler_dirs, patch_dirs=self.patch_dirs,
        )  # fmt: skip


class PipelineService:
    """Models found on disk (or given explicitly), loaded lazily, one at a time."""

    def __init__(
        self,
        models: Sequence[ModelSet],
        *,
        lora_dirs: Sequence[Path] = (),
        options: RunOptions | None = None,
        rescan: Callable[[], Sequence[ModelSet]] | None = None,
        upscaler_dirs: Sequence[Path] | None = None,
        patch_dirs: Sequence[Path] = (),
    ) -> None:
        if not models:
            raise AnimaError("no Anima model found to serve", setting="model")
        self._models = {m.name: m for m in models}
        self._lora_dirs = tuple(Path(d) for d in lora_dirs)
        self._loras = self._scan_loras()
        # Names only, inside the LoRA / model_patches / upscaler folders (never paths): clients
        # cannot point at other files. Upscaler models: the upscale_models/ (and ESRGAN/) folders
        # beside the LoRA folders by default.
        if upscaler_dirs is None:
            upscaler_dirs = [Path(d).parent / f for d in self._lora_dirs for f in UPSCALER_FOLDERS]
        self._upscaler_dirs = tuple(dict.fromkeys(Path(d) for d in upscaler_dirs))
        self._patch_dirs = tuple(Path(d) for d in patch_dirs)
        self._patches = _scan_folders(self._patch_dirs)
        self._options = dataclasses.replace(
            options or RunOptions(),
            lora_resolver=self.resolve_lora,
            upscaler_resolver=self.resolve_upscaler,
            control_resolver=self.resolve_patch,
        )
        self._rescan = rescan
        self._lock = threading.Lock()
        self._selected = next(iter(self._models))
        self._loaded: tuple[str, object] | None = None  # (name, Pipeline)
        self._hashes: dict[str, str] = {}  # models loaded here, or by a remote worker (`record_hash`)
        self._spec = ServiceSpec(
            tuple(models), self._lora_dirs, options or RunOptions(), self._upscaler_dirs, self._patch_dirs
        )

    @classmethod
    def from_files(
        cls,
        dit: Path,
        text_encoder: Path,
        vae: Path,
        *,
        tokenizer_dir: Path,
        lora_dirs: Sequence[Path] = (),
        options: RunOptions | None = None,
        patch_dirs: Sequence[Path] = (),
    ) -> PipelineService:
        ms = ModelSet(
            Path(dit).stem, Path(dit), Path(text_encoder), Path(vae),
            Path(tokenizer_dir) / "qwen", Path(tokenizer_dir) / "t5", "explicit",
        )  # fmt: skip
        return cls([ms], lora_dirs=lora_dirs, options=options, patch_dirs=patch_dirs)

    # ----------------------------------------------------------------- catalog
    def models(self) -> list[ModelInfo]:
        with self._lock:
            loaded = self._loaded
            out = []
            for name, ms in self._models.items():
                h = loaded[1].model_hash if loaded and loaded[0] == name else self._hashes.get(name)
                demo_model = ms.source == demo.SOURCE
                defaults = defaults_for(name, demo.RECIPE_DEFAULTS if demo_model else None)
                out.append(ModelInfo(name, str(ms.diffusers or ms.dit), h, demo_model, defaults))
            return out

    def current_model(self) -> str:
        with self._lock:
            return self._selected

    def loaded_model(self) -> str | None:
        with self._lock:
            return self._loaded[0] if self._loaded else None

    def device(self) -> str:
        return self._options.device

    def spec(self) -> ServiceSpec:
        """What another process needs to build the same service (a Ray actor): the model sets
        known now, the folders and the run options, all picklable."""
        with self._lock:
            return dataclasses.replace(self._spec, models=tuple(self._models.values()))

    def record_hash(self, name: str, model_hash: str | None) -> None:
        """A model's hash, as a worker that loaded it elsewhere reports it (A1111 titles show it)."""
        if model_hash:
            with self._lock:
                self._hashes[name] = model_hash

    def check_model(self, name: str) -> str:
        """A served model's name for `name` (exact, or an A1111 title 'name.safetensors [hash]')."""
        check_plain_name(name, "model")
        base = name.split(" [", 1)[0].strip()
        base = base[: -len(".safetensors")] if base.endswith(".safetensors") else base
        with self._lock:
            if base in self._models:
                return base
            known = ", ".join(self._models)
        raise AnimaError(f"model {name!r} is not served here; choose from: {known}")

    def select_model(self, name: str) -> str:
        name = self.check_model(name)
        with self._lock:
            self._selected = name
        return name

    def loras(self) -> dict[str, Path]:
        with self._lock:
            return dict(self._loras)

    def resolve_lora(self, name: str) -> Path:
        """A LoRA by name (file stem), found only among the files inside the LoRA folders and
        checked (header only) to be a LoRA. Never a path: clients cannot point at other files."""
        check_plain_name(name, "LoRA")
        loras = self.loras()
        if name not in loras:
            raise AnimaError(f"LoRA {name!r} not found; known: {', '.join(sorted(loras)) or 'none'}")
        return check_lora(loras[name])

    def upscalers(self) -> dict[str, Path]:
        """Upscaler model files by file name, inside the upscaler folders only (names, never paths)."""
        out: dict[str, Path] = {}
        for root in self._upscaler_dirs:
            base = root.resolve()
            for p in sorted(base.rglob("*")) if base.is_dir() else []:
                real = p.resolve()
                if p.suffix.lower() in UPSCALER_SUFFIXES and real.is_relative_to(base) and real.is_file():
                    out.setdefault(p.name, real)
        return out

    def resolve_upscaler(self, name: str) -> Path:
        """A file name (or stem, as A1111 lists them) of the upscaler folders."""
        found = self.upscalers()
        hit = found.get(name) or next((p for n, p in found.items() if Path(n).stem == name), None)
        if hit is None:
            raise AnimaError(
                f"upscaler model {name!r} not found; known: {', '.join(sorted(found)) or 'none'}",
                setting="hires_upscaler",
            )
        return hit

    def control_patches(self) -> dict[str, Path]:
        with self._lock:
            return dict(self._patches)

    def resolve_patch(self, name: str) -> Path:
        """A control patch by name (file stem, or an A1111 title 'name [hash]'), found only inside the
        model_patches folders. Never a path."""
        base = name.split(" [", 1)[0].strip()
        check_plain_name(base, "control model")
        patches = self.control_patches()
        if base not in patches:
            known = ", ".join(sorted(patches)) or "none"
            raise AnimaError(f"control model {base!r} not found; known: {known}", setting="control_model")
        return patches[base]

    def dit_config(self, name: str | None = None):
        """The DiT config of a served model (from its header; None for a diffusers folder)."""
        from anima.weights.lllite import dit_config_of

        ms = self._models[self.check_model(name) if name else self.current_model()]
        return None if ms.diffusers is not None else dit_config_of(ms.dit)

    def add_models(self, sets: Sequence[ModelSet]) -> None:
        """Serve these model sets too (the ones already known keep their files)."""
        with self._lock:
            for ms in sets:
                self._models.setdefault(ms.name, ms)

    def refresh(self) -> None:
        found = list(self._rescan()) if self._rescan else []
        loras = self._scan_loras()
        patches = _scan_folders(self._patch_dirs)
        with self._lock:
            for ms in found:
                self._models.setdefault(ms.name, ms)
            self._loras = loras
            self._patches = patches

    def _scan_loras(self) -> dict[str, Path]:
        return _scan_folders(self._lora_dirs)

    def samplers(self) -> list[str]:
        return list(samplers.SAMPLERS)

    def schedulers(self) -> list[str]:
        return list(schedules.SCHEDULERS)

    # ----------------------------------------------------------------- running
    def load(self, name: str) -> None:
        """Load a served model now (a worker warming up), rather than at its first job."""
        self._pipeline(self.check_model(name))

    def _pipeline(self, name: str):
        with self._lock:
            if self._loaded and self._loaded[0] == name:
                return self._loaded[1]
            ms = self._models[name]
            self._loaded = None  # drop the old model before loading the next one
        log.info("loading model %s", name)
        pipe = Pipeline.load(ms, self._options)
        with self._lock:
            self._loaded = (name, pipe)
            self._hashes[name] = pipe.model_hash
        return pipe

    def run(
        self,
        recipe: Recipe,
        *,
        init_image=None,
        mask=None,
        progress: StepFn | None = None,
        preview: PreviewFn | None = None,
        preview_every: int = 0,
    ) -> tuple[list[tuple[object, Recipe]], list[str]]:
        """Run one recipe -> ([(uint8 [H,W,3], recipe)] per batch image, the pipeline's notes).

        `init_image` is a PIL RGB image at the recipe size; `mask` an 'L' image of the same size
        (white = repaint); blur, grow and "only masked" come from the recipe's workflow settings.
        """
        name = self.check_model(recipe.model) if recipe.model else self.current_model()
        pipe = self._pipeline(name)
        init = pixel_mask = None
        if init_image is not None:
            arr = np.asarray(init_image.convert("RGB"), dtype=np.float32) / np.float32(255.0)
            init = torch.from_numpy(arr)[None]
        if mask is not None:
            pixel_mask = torch.from_numpy(
                np.asarray(mask.convert("L"), dtype=np.float32) / np.float32(255.0)
            )[None]
        on_latent = (
            _previewer(pipe, preview, preview_every) if preview is not None and preview_every > 0 else None
        )
        result = pipe.generate(recipe, init_image=init, mask=pixel_mask, progress=progress, preview=on_latent)
        return list(zip(result.uint8(), result.recipes, strict=True)), list(result.notes)


def _scan_folders(roots: Sequence[Path]) -> dict[str, Path]:
    """{file stem: path} of the .safetensors files inside `roots` (first one wins)."""
    out: dict[str, Path] = {}
    for root in roots:
        base = root.resolve()
        for p in sorted(base.rglob("*.safetensors")) if base.is_dir() else []:
            real = p.resolve()
            if real.is_relative_to(base) and real.is_file():  # a symlink out of the folder is skipped
                out.setdefault(p.stem, real)
    return out


PREVIEW_MIN_INTERVAL_S = 0.5  # a VAE decode can cost more than a small step: cap previews in time too


def _previewer(pipe, sink: PreviewFn, every: int):
    """preview(step, total, x0) for the pipeline: every `every` steps, at most once per
    PREVIEW_MIN_INTERVAL_S, the linear latent-to-RGB projection of x0 (`preview_rgb`, the reference
    UIs' "latent2rgb" preview: no VAE, so previews cost nothing next to a step), shown at the
    image's size (each latent pixel an 8x8 block), as A1111 clients expect."""
    last = [0.0]
    factor = pipe.vae.spatial_factor

    def on_latent(step: int, total: int, x0) -> None:
        if step % every or step >= total or time.monotonic() - last[0] < PREVIEW_MIN_INTERVAL_S:
            return  # the last step's image is the result itself
        rgb = preview_rgb(x0).numpy()
        sink(step, total, np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1))
        last[0] = time.monotonic()

    return on_latent
