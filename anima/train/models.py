"""What a run trains: loading the base model, choosing trainable weights, saving the result.

- ``network = "lora" | "lokr"``: a `anima.lora.network.LoRANetwork` over the DiT (and optionally
  the adapter / text encoder), applied as runtime wrappers; the base weights stay frozen.
- ``network = "full"``: every weight of the DiT and/or the adapter is trained (fp32 master
  weights); the result is a DiT file in the official layout (adapter included) that `load_dit` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from anima.errors import AnimaError
from anima.lora.network import LoRANetwork
from anima.lora.targets import DEFAULT_TARGETS
from anima.runtime.precision import parse_dtype
from anima.text.tokenize import AnimaTokenizer
from anima.weights import loading
from anima.weights.hashes import model_hash
from anima.weights.safetensors import save


@dataclass
class Models:
    dit: nn.Module
    adapter: nn.Module
    text_encoder: nn.Module
    vae: nn.Module
    tokenizer: object
    base_hash: str


def load_models(cfg, device: torch.device) -> Models:

    tok_dir = Path(cfg.tokenizer_dir)
    tokenizer = AnimaTokenizer.from_dirs(tok_dir / "qwen", tok_dir / "t5")
    dit, adapter = loading.load_dit(cfg.dit, device=device, dtype=torch.float32)
    te = loading.load_text_encoder(cfg.text_encoder, device=device)
    vae = loading.load_vae(cfg.vae, device=device, dtype=torch.float32)
    # Loaded weights may be views into a read-only file mapping: give trained parts their own memory.
    for part, on in ((dit, cfg.train_dit), (adapter, cfg.train_adapter)):
        if cfg.network == "full" and on:
            for p in part.parameters():
                p.data = p.data.clone()
    return Models(dit, adapter, te, vae, tokenizer, model_hash(Path(cfg.dit)))


class NamedState:
    """The trainer's checkpoint of a trainable thing: its `named` parameters (name -> tensor),
    copied out and copied back in place (resume checks the names match)."""

    named: dict[str, nn.Parameter]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.named.items()}

    @torch.no_grad()
    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        if sd.keys() != self.named.keys():
            raise AnimaError("checkpoint does not match this run's trainable weights (different settings?)")
        for n, p in self.named.items():
            p.copy_(sd[n])


class Trainable(NamedState):
    """The trainable parameters of a run, their names for checkpoints, and the result writer."""

    def __init__(self, cfg, models: Models, generator: torch.Generator) -> None:
        self.cfg, self.models = cfg, models
        self.network = None
        for m in (models.dit, models.adapter, models.text_encoder, models.vae):
            m.requires_grad_(False)
        if cfg.network == "full":
            self.named: dict[str, nn.Parameter] = {}
            for prefix, part, on in (
                ("dit.", models.dit, cfg.train_dit),
                ("adapter.", models.adapter, cfg.train_adapter),
            ):
                if on:
                    part.requires_grad_(True)
                    self.named.update({prefix + n: p for n, p in part.named_parameters()})
        else:

            targets = {}
            if cfg.train_dit:
                targets["dit"] = cfg.targets or DEFAULT_TARGETS["dit"]
            if cfg.train_adapter:
                targets["adapter"] = DEFAULT_TARGETS["adapter"]
            if cfg.train_text_encoder:
                targets["te"] = DEFAULT_TARGETS["te"]
            self.network = LoRANetwork(
                {"dit": models.dit, "adapter": models.adapter, "te": models.text_encoder},
                rank=cfg.rank,
                alpha=cfg.effective_alpha,
                kind=cfg.network,
                targets=targets,
                factor=cfg.lokr_factor,
                generator=generator,
            )
            self.network.to(models.dit.t_embedding_norm.weight.device)
            self.network.apply()
            self.named = dict(self.network.named_parameters())
        if not self.named:
            raise AnimaError("nothing to train with these settings")

    def param_groups(self) -> list[dict]:
        adapter_lr = self.cfg.adapter_lr or self.cfg.lr
        main, adapter = [], []
        for name, p in self.named.items():
            # Full: "adapter.<path>"; LoRA network: "adapters.adapter:<path>.<factor>".
            is_adapter = name.startswith(("adapter.", "adapters.adapter:"))
            (adapter if is_adapter else main).append(p)
        groups = [{"params": main, "lr": self.cfg.lr}] if main else []
        if adapter:
            groups.append({"params": adapter, "lr": adapter_lr})
        return groups

    # ------------------------------------------------------------------ result
    def save_result(self, path: Path, metadata: dict[str, str]) -> Path:
        dtype = parse_dtype(self.cfg.save_dtype)
        if self.network is not None:
            fmt = self.cfg.save_format
            return self.network.save(path, fmt=fmt, metadata=metadata, dtype=dtype)

        tensors = {f"net.{k}": v for k, v in self.models.dit.state_dict().items()}
        tensors.update({f"net.llm_adapter.{k}": v for k, v in self.models.adapter.state_dict().items()})
        tensors = {k: v.detach().to("cpu", dtype) for k, v in tensors.items()}
        save(tensors, path, metadata={"format": "pt", **metadata})
        return path
