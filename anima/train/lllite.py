"""Training a ControlNet-LLLite patch (``network = "lllite"``): frozen DiT, trained patch, v2 file.

Data: each training image ``data_dir/a/b.png`` (with its caption ``b.txt``) is paired with the
control image of the same relative path and stem in ``control_dir`` (any image extension), cropped
and resized exactly like the image (its bucket), and fed to the conditioning network as inference
does (`anima.workflows.control_inputs.control_input`: RGB in [-1, 1]). Latent and text caches work
as for LoRAs; control images are small and read per step.

The patch starts as sd-scripts starts it (`LLLite.init_for_training`: ``up``, ``cond_to_film`` and
``depth_embed`` zero, so step 0 is exactly the base model) and is installed on the DiT with the
inference mechanism (`anima.workflows.control.ControlRun`), every patch active in every training
forward with the batch's own embeddings. The result is written in kohya's v2 named-key format with
the metadata the reference loader reads (``lllite.version`` "2", ASPP dilations, masked input).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch import nn

from anima.errors import AnimaError
from anima.model.lllite import DEFAULT_ASPP_DILATIONS, TARGETS, LLLite, LLLiteConfig, ModuleSpec
from anima.train.data import IMAGE_EXTENSIONS, Item, load_image
from anima.train.models import NamedState
from anima.weights.lllite import save_lllite
from anima.workflows.control import ControlPatch, ControlRun
from anima.workflows.control_inputs import control_input


def parse_targets(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [t for t in names if t not in TARGETS]
    if bad or not names:
        what = bad[0] if bad else text
        raise AnimaError(f"lllite_targets: unknown target {what!r}; use {', '.join(TARGETS)}")
    return names


def patch_config(cfg, dit) -> LLLiteConfig:
    """The patch a `TrainConfig` asks for, on `dit` (every block, the configured targets)."""
    targets = parse_targets(cfg.lllite_targets)
    modules = tuple(ModuleSpec(b, t, cfg.lllite_mlp_dim) for b in range(dit.cfg.num_blocks) for t in targets)
    return LLLiteConfig(
        cond_in_channels=3, cond_dim=cfg.lllite_cond_dim, cond_emb_dim=cfg.lllite_cond_emb_dim,
        resblocks=cfg.lllite_resblocks, aspp_dilations=DEFAULT_ASPP_DILATIONS if cfg.lllite_aspp else (),
        width=dit.cfg.model_channels, modules=modules,
    )  # fmt: skip


def control_path(item: Item, data_dir: str | Path, control_dir: str | Path) -> Path:
    """The control image paired with a training image: same relative folder and stem."""
    rel = Path(item.image).resolve().relative_to(Path(data_dir).resolve())
    for ext in IMAGE_EXTENSIONS:
        candidate = Path(control_dir) / rel.with_suffix(ext)
        if candidate.is_file():
            return candidate
    raise AnimaError(f"no control image for {rel} in {control_dir} (same name, any image extension)")


class LLLiteTrainable(NamedState):
    """The trainable patch of an lllite run: the same interface as `anima.train.models.Trainable`."""

    network = None

    def __init__(self, cfg, models, generator: torch.Generator) -> None:
        self.cfg, self.models = cfg, models
        for m in (models.dit, models.adapter, models.text_encoder, models.vae):
            m.requires_grad_(False)
        device = models.dit.t_embedding_norm.weight.device
        self.lllite = LLLite(patch_config(cfg, models.dit)).to(device)
        self.lllite.init_for_training(generator)
        self.lllite.requires_grad_(True)
        self.named: dict[str, nn.Parameter] = dict(self.lllite.named_parameters())
        # Installed once for the run; every training forward sets the batch's embedding.
        self.run = ControlRun([ControlPatch(self.lllite, torch.zeros(1, 16, 16, 3), None, 1.0, 1.0, 0.0)])
        self._stack = ExitStack()
        self._stack.enter_context(self.run.installed(models.dit))

    def check_data(self, items) -> None:
        for it in items:
            control_path(it, self.cfg.data_dir, self.cfg.control_dir)

    @contextmanager
    def control(self, items, device: torch.device):
        """Within the block, the DiT's forwards are controlled by the batch's control images."""
        images = []
        for it in items:
            path = control_path(it, self.cfg.data_dir, self.cfg.control_dir)
            images.append(load_image(Item(path, it.caption, it.size, it.bucket)).float() / 255.0)
        w, h = items[0].bucket
        x = control_input(torch.stack(images), None, width=w, height=h, channels=3, device=device)
        with self.run.with_embeddings([self.lllite.encode(x)]):
            yield

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.named.values()), "lr": self.cfg.lr}]

    def save_result(self, path: Path, metadata: dict[str, str]) -> Path:
        from anima.runtime.precision import parse_dtype

        extra = {k: v for k, v in metadata.items() if not k.startswith("ss_network")}
        extra["lllite.target_layers"] = self.cfg.lllite_targets
        extra["lllite.mlp_dim"] = str(self.cfg.lllite_mlp_dim)
        return save_lllite(self.lllite, path, extra, dtype=parse_dtype(self.cfg.save_dtype))

    def close(self) -> None:
        self._stack.close()
