"""`TrainConfig`: every training setting as one frozen value, from a TOML file and/or flags.

The TOML file may group keys in tables (``[data]``, ``[network]``, ...): tables are only for
reading comfort and are flattened, so each key must be a field name. Every field is also a flag
(``resolution`` -> ``--resolution``, booleans as ``--x`` / ``--no-x``); flags override the file.
Relative paths in a TOML file are relative to the file. Validation happens once, here, so a bad
value fails before any model is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from anima.errors import AnimaError

NETWORKS = ("lora", "lokr", "full", "lllite")
OPTIMIZERS = ("adamw", "adamw8bit")
SCHEDULES = ("cosine", "constant")
TIMESTEP_SAMPLING = ("uniform", "logit_normal")
PRECISIONS = ("bf16", "fp32", "fp16")
SAVE_FORMATS = ("comfy", "sd-scripts")
SAVE_DTYPES = ("bf16", "fp32", "fp16")
LOG_BACKENDS = ("auto", "csv", "tensorboard")
PATH_FIELDS = (
    "dit", "text_encoder", "vae", "tokenizer_dir", "data_dir", "cache_dir", "output_dir", "control_dir",
)  # fmt: skip


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    # -- model files
    dit: str = _f("", "base DiT file (official layout, adapter included)")
    text_encoder: str = _f("", "Qwen3 text encoder file")
    vae: str = _f("", "Qwen-Image / Wan-2.1 VAE file")
    tokenizer_dir: str = _f("", "folder with qwen/ and t5/ tokenizer folders")
    # -- data
    data_dir: str = _f("", "folder of images with same-name .txt captions")
    caption_extension: str = _f(".txt", "caption file extension")
    resolution: int = _f(1024, "bucket area is resolution^2 pixels")
    bucket_step: int = _f(64, "bucket sides are multiples of this (a multiple of 16)")
    max_aspect: float = _f(2.0, "largest bucket aspect ratio (long side / short side)")
    repeats: int = _f(1, "times each image appears per epoch")
    shuffle_captions: bool = _f(False, "shuffle comma-separated tags each step")
    keep_tokens: int = _f(0, "leading tags kept in place by shuffling and tag dropout")
    tag_dropout: float = _f(0.0, "probability of dropping each (non-kept) tag each step")
    caption_dropout: float = _f(
        0.0, "probability of an empty caption (teaches the unconditional model for CFG)"
    )
    cache_dir: str = _f("", "cache folder (default: <data_dir>/.anima_cache)")
    cache_latents: bool = _f(True, "encode images once and keep the latents on disk")
    cache_text: bool = _f(True, "keep text-encoder outputs on disk (in memory when captions are random)")
    # -- network
    network: str = _f(
        "lora", "what to train: lora, lokr, full (all weights of the trained parts), lllite (control patch)"
    )
    rank: int = _f(16, "LoRA / LoKr rank")
    alpha: float = _f(0.0, "LoRA alpha (0: equal to rank)")
    lokr_factor: int = _f(-1, "LoKr Kronecker factor (-1: balanced)")
    targets: str = _f("", "regex over DiT Linear paths to adapt (default: attention q/k/v/out + MLP)")
    train_dit: bool = _f(True, "train the DiT")
    train_adapter: bool = _f(False, "also train the LLM adapter")
    train_text_encoder: bool = _f(False, "also train the text encoder (LoRA only; disables the text cache)")
    adapter_lr: float = _f(0.0, "learning rate of the adapter (0: same as lr)")
    # -- ControlNet-LLLite (network = "lllite"; anima.train.lllite)
    control_dir: str = _f("", "lllite: folder of control images named like the training images")
    lllite_targets: str = _f(
        "self_attn_q_proj,self_attn_k_proj,self_attn_v_proj,cross_attn_q_proj,mlp_layer1",
        "lllite: DiT projections whose inputs the patch adds to (comma list)",
    )
    lllite_cond_dim: int = _f(64, "lllite: conditioning network width")
    lllite_cond_emb_dim: int = _f(32, "lllite: control embedding width")
    lllite_mlp_dim: int = _f(64, "lllite: hidden width of each patched projection's module")
    lllite_resblocks: int = _f(1, "lllite: residual blocks in the conditioning network")
    lllite_aspp: bool = _f(False, "lllite: add the ASPP stage (dilations 1,2,4,8)")
    # -- optimisation
    optimizer: str = _f("adamw", "adamw or adamw8bit (needs bitsandbytes)")
    lr: float = _f(1e-4, "peak learning rate")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.999, "AdamW beta2")
    eps: float = _f(1e-8, "AdamW epsilon")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0: off)")
    schedule: str = _f("cosine", "learning-rate schedule after warm-up: cosine or constant")
    warmup_steps: int = _f(0, "linear warm-up steps")
    min_lr_ratio: float = _f(0.0, "cosine floor as a fraction of lr")
    steps: int = _f(1000, "optimizer steps")
    batch_size: int = _f(1, "images per micro-batch (per process)")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    # -- objective
    timestep_sampling: str = _f("uniform", "uniform or logit_normal, then shifted")
    shift: float = _f(3.0, "sigma shift s: sigma = s t / (1 + (s - 1) t)")
    logit_mean: float = _f(0.0, "logit-normal mean")
    logit_std: float = _f(1.0, "logit-normal standard deviation")
    # -- precision and memory
    precision: str = _f("bf16", "bf16 or fp16 autocast over fp32 weights, or fp32")
    gradient_checkpointing: bool = _f(False, "recompute DiT blocks in backward (less memory, slower)")
    ema_decay: float = _f(0.0, "EMA of the trained weights (0: off); the saved result uses the EMA")
    seed: int = _f(0, "seed of everything random (data order, noise, timesteps, dropout)")
    device: str = _f("auto", "cpu, cuda, cuda:N or auto")
    threads: int = _f(0, "CPU threads for torch (0: torch's default)")
    # -- output
    output_dir: str = _f("output", "folder for the result, checkpoints, samples and logs")
    output_name: str = _f("anima-lora", "file name (without .safetensors) of the result")
    save_format: str = _f("comfy", "LoRA file format: comfy or sd-scripts")
    save_dtype: str = _f("bf16", "dtype of the saved result")
    save_every: int = _f(0, "checkpoint every N steps (0: only at the end and on Ctrl-C)")
    keep_checkpoints: int = _f(2, "resumable checkpoints to keep")
    resume: str = _f("", "resume from a checkpoint folder, or 'latest' in output_dir")
    # -- samples and logs
    sample_every: int = _f(0, "write sample images every N steps (0: off)")
    sample_prompts: tuple[str, ...] = _f((), "sample prompt (repeat the flag for several)")
    sample_negative: str = _f("", "negative prompt of the samples")
    sample_seed: int = _f(0, "seed of the first sample (then +1 per prompt)")
    sample_steps: int = _f(20, "sampling steps")
    sample_cfg: float = _f(4.0, "CFG scale of the samples")
    sample_sampler: str = _f("er_sde", "sampler of the samples")
    sample_size: int = _f(0, "sample width and height (0: resolution)")
    log_every: int = _f(10, "log a row every N steps")
    log_backend: str = _f("auto", "auto (TensorBoard if installed, plus CSV), csv or tensorboard")

    def __post_init__(self) -> None:
        choices = {
            "network": NETWORKS,
            "optimizer": OPTIMIZERS,
            "schedule": SCHEDULES,
            "timestep_sampling": TIMESTEP_SAMPLING,
            "precision": PRECISIONS,
            "save_format": SAVE_FORMATS,
            "save_dtype": SAVE_DTYPES,
            "log_backend": LOG_BACKENDS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise AnimaError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        positive = (
            "resolution",
            "bucket_step",
            "repeats",
            "rank",
            "steps",
            "batch_size",
            "grad_accum",
            "sample_steps",
            "log_every",
            "keep_checkpoints",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise AnimaError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("tag_dropout", "caption_dropout", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise AnimaError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("warmup_steps", "save_every", "sample_every", "keep_tokens", "threads", "seed"):
            if getattr(self, name) < 0:
                raise AnimaError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.bucket_step % 16:
            raise AnimaError(
                f"bucket_step must be a multiple of 16 (VAE 8 x patch 2), got {self.bucket_step}"
            )
        if self.max_aspect < 1.0:
            raise AnimaError(f"max_aspect must be >= 1, got {self.max_aspect}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise AnimaError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr <= 0 or self.shift <= 0 or self.logit_std <= 0:
            raise AnimaError("lr, shift and logit_std must be > 0")
        if not (self.train_dit or self.train_adapter or self.train_text_encoder):
            raise AnimaError("nothing to train: enable train_dit, train_adapter or train_text_encoder")
        if self.network == "full" and self.train_text_encoder:
            raise AnimaError(
                "full training of the text encoder is not supported; use a LoRA (network = lora)"
            )
        if self.network == "lllite":
            if not self.train_dit or self.train_adapter or self.train_text_encoder:
                raise AnimaError("an lllite patch trains alone: train_dit only, no adapter or text encoder")
            for name in ("lllite_cond_dim", "lllite_cond_emb_dim", "lllite_mlp_dim"):
                if getattr(self, name) < 2 or (name == "lllite_cond_dim" and getattr(self, name) % 2):
                    raise AnimaError(f"{name} must be an even number >= 2, got {getattr(self, name)}")
            if self.lllite_resblocks < 0:
                raise AnimaError(f"lllite_resblocks must be >= 0, got {self.lllite_resblocks}")
        if self.sample_size and self.sample_size % 16:
            raise AnimaError(f"sample_size must be a multiple of 16, got {self.sample_size}")

    # ------------------------------------------------------------------ derived
    @property
    def effective_alpha(self) -> float:
        return self.alpha if self.alpha > 0 else float(self.rank)

    @property
    def random_captions(self) -> bool:
        """Captions change from step to step, so text encodings cannot be cached per image."""
        return self.shuffle_captions or self.tag_dropout > 0

    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.data_dir) / ".anima_cache"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sample_prompts"] = list(self.sample_prompts)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def with_(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def check_inputs(self) -> None:
        """The required files exist (called before any work starts)."""
        needed = ("dit", "text_encoder", "vae", "tokenizer_dir", "data_dir")
        for name in needed + (("control_dir",) if self.network == "lllite" else ()):
            value = getattr(self, name)
            if not value:
                raise AnimaError(f"{name} is not set (TOML key '{name}' or --{name.replace('_', '-')})")
            if not Path(value).exists():
                raise AnimaError(f"{name} {value}: not found")


_FIELDS = {f.name: f for f in fields(TrainConfig)}
_TYPES = typing.get_type_hints(TrainConfig)


def _coerce(name: str, value: Any) -> Any:
    kind = _TYPES[name]
    if kind is bool:
        if not isinstance(value, bool):
            raise AnimaError(f"{name} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise AnimaError(f"{name} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AnimaError(f"{name} must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise AnimaError(f"{name} must be text, got {value!r}")
        return value
    # tuple[str, ...]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise AnimaError(f"{name} must be a list of strings, got {value!r}")
    return tuple(value)


def _flatten(table: dict[str, Any], where: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            for k, v in _flatten(value, f"{where}{key}.").items():
                if k in out:
                    raise AnimaError(f"config key '{k}' is given twice")
                out[k] = v
        else:
            if key in out:
                raise AnimaError(f"config key '{key}' is given twice")
            out[key] = value
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """TOML file -> {field: value} with paths made absolute relative to the file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnimaError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AnimaError(f"{path}: not a valid TOML file ({exc})") from None
    values = _flatten(raw)
    for key in values:
        if key not in _FIELDS:
            import difflib

            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise AnimaError(f"{path}: unknown config key '{key}'{hint}")
    out = {k: _coerce(k, v) for k, v in values.items()}
    for key in PATH_FIELDS:
        if out.get(key) and not Path(out[key]).is_absolute():
            out[key] = str((path.parent / out[key]).resolve())
    return out


def make_config(values: dict[str, Any]) -> TrainConfig:
    unknown = set(values) - set(_FIELDS)
    if unknown:
        raise AnimaError(f"unknown config key(s): {', '.join(sorted(unknown))}")
    return TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})


# ------------------------------------------------------------------ flags
def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field; defaults are SUPPRESS so only flags actually given override the file."""
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _TYPES[f.name]
        help_text = f"{f.metadata['help']} (default: {f.default!r})"
        if kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        elif kind in (int, float, str):
            nargs = {"nargs": "?", "const": "latest"} if f.name == "resume" else {}
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text, **nargs)
        else:
            parser.add_argument(
                flag.rstrip("s"), dest=f.name, action="append", default=argparse.SUPPRESS, help=help_text
            )


def config_from_args(
    args: argparse.Namespace, config_path: str | Path | None, base: Mapping[str, Any] | None = None
) -> TrainConfig:
    """`base` (the files of a model named with --model), overridden by the TOML (if any), overridden
    by the flags present in `args`."""
    values = {**(base or {}), **(read_toml(config_path) if config_path else {})}
    for name in _FIELDS:
        if hasattr(args, name):
            values[name] = getattr(args, name)
    return make_config(values)
