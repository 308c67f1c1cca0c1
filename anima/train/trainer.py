"""The training loop: `Trainer(cfg).run()` -> the saved LoRA / DiT file.

Per optimizer step: `grad_accum` micro-batches per process, each a rectified-flow loss on cached
latents and text states, under bf16/fp16 autocast over fp32 master weights (fp16 with a gradient
scaler; the DiT keeps its residual stream in the weights' fp32, as its fp16-safe path does), then
gradient all-reduce across processes (torchrun), clipping, AdamW, the LR schedule and the EMA.

Determinism and resuming. The batch order and every random draw of micro-batch ``m`` come from
generators seeded by (seed, m) (`anima.train.data`), so step s consumes the same data and noise
whether the run was interrupted or not, and however many processes split it. A checkpoint stores the
trained weights, optimizer, scheduler, EMA, gradient scaler, global RNG states and the position; a
resumed run on the CPU therefore reproduces the uninterrupted one bit for bit
(tests/test_train_resume.py kills a run with SIGKILL to check it).

Data parallel: run under ``torchrun --nproc-per-node N``; process r takes micro-batches
m = (s * grad_accum + a) * N + r, gradients are averaged with one all-reduce, and only rank 0
writes files. The CPU uses the gloo backend, CUDA nccl. N processes with accumulation A compute the
same update as one process with accumulation N * A (up to summation order).

This module is a little over 400 lines because it is one class whose methods share the optimizer,
model and cache state; the pieces that stand alone (data, caches, checkpoints, logs, EMA,
sampling) are their own modules.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from anima.errors import AnimaError
from anima.model.latent import normalize_latent
from anima.model.vae import image_to_vae_input
from anima.train import checkpoint as ckpt
from anima.train.cache import LatentCache, TextCache, TextEntry, content_hash
from anima.train.config import TrainConfig
from anima.train.data import BatchOrder, load_image, mix_seed, process_caption, scan
from anima.train.ema import EMA, swapped_in
from anima.train.forward import adapter_context, dit_velocity, encode_captions
from anima.train.lllite import LLLiteTrainable
from anima.train.logs import TrainLog
from anima.train.models import Trainable, load_models
from anima.train.objective import flow_loss, sample_sigmas
from anima.train.sampling import SampleWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepInfo:
    """What the progress display shows after each optimizer step."""

    step: int
    total: int
    loss: float
    lr: float
    seconds_per_step: float
    eta_seconds: float
    epoch: float


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based): linear warm-up, then cosine/constant."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(name)


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        *,
        on_step: Callable[[StepInfo], None] | None = None,
        on_message: Callable[[str], None] | None = None,
    ) -> None:
        cfg.check_inputs()
        self.cfg = cfg
        self.on_step = on_step
        self.say = on_message or log.info

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        import torch.distributed as dist


        cfg = self.cfg
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.device = _device(cfg.device)
        self._owns_process_group = self.world > 1 and not dist.is_initialized()
        if self._owns_process_group:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.rank = dist.get_rank() if self.world > 1 else 0
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.items = scan(cfg)
        self.order = BatchOrder([it.bucket for it in self.items], cfg.batch_size, cfg.seed, cfg.repeats)
        self.models = load_models(cfg, self.device)
        kind = LLLiteTrainable if cfg.network == "lllite" else Trainable
        self.trainable = kind(cfg, self.models, torch.Generator().manual_seed(mix_seed("init", cfg.seed)))
        if cfg.network == "lllite":
            self.trainable.check_data(self.items)  # every image has its control image, before any step
        self.params = list(self.trainable.named.values())
        self._make_caches()
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.ema = EMA(self.trainable.named, cfg.ema_decay)
        self.step = 0

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        kw = {"betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps, "weight_decay": cfg.weight_decay}
        groups = self.trainable.param_groups()
        if cfg.optimizer == "adamw8bit":
            try:
                import bitsandbytes as bnb
            except ImportError:
                raise AnimaError("optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
            return bnb.optim.AdamW8bit(groups, **kw)
        return torch.optim.AdamW(groups, **kw)

    def _make_caches(self) -> None:
        import torch.distributed as dist


        cfg = self.cfg
        root = cfg.cache_path()
        self.latents = None
        if cfg.cache_latents:
            self.latents = LatentCache(root / "latents", content_hash(cfg.vae))
            if self.rank == 0:
                n = self.latents.fill(self.items, self._encode_images, load_image)
                if n:
                    self.say(f"cached {n} latents in {root / 'latents'}")
            if self.world > 1:
                dist.barrier()
        self.text = None
        if cfg.cache_text and not cfg.train_text_encoder:
            fingerprint = content_hash(cfg.text_encoder) + content_hash(cfg.tokenizer_dir)
            on_disk = not cfg.random_captions
            self.text = TextCache(root / "text" if on_disk else None, fingerprint)
            if on_disk and self.rank == 0:
                captions = sorted(
                    {it.caption for it in self.items} | ({""} if cfg.caption_dropout else set())
                )
                todo = [c for c in captions if self.text.get(c) is None]
                self._encode_text(todo)
                if todo:
                    self.say(f"cached {len(todo)} text encodings in {root / 'text'}")
            if on_disk and self.world > 1:
                dist.barrier()

    @torch.no_grad()
    def _encode_images(self, images_uint8: torch.Tensor) -> torch.Tensor:

        x = image_to_vae_input(images_uint8.float() / 255.0).to(self.device)
        return self.models.vae.encode(x).float().cpu()

    def _encode_text(self, captions: list[str]) -> list:

        m = self.models
        grad = self.cfg.train_text_encoder
        if self.text is None:
            return encode_captions(m.text_encoder, m.tokenizer, captions, grad=grad)
        out = []
        for c in captions:
            entry = self.text.get(c)
            if entry is None:
                ((hidden, ids),) = encode_captions(m.text_encoder, m.tokenizer, [c])
                entry = TextEntry(hidden, ids)
                self.text.put(c, entry)
            out.append((entry.qwen_hidden, entry.t5_ids))
        return out

    # ------------------------------------------------------------------ one micro-batch
    def _autocast(self):
        if self.cfg.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _micro_loss(self, micro: int) -> torch.Tensor:

        cfg, m = self.cfg, self.models
        idx = self.order.batch(micro)
        items = [self.items[i] for i in idx]
        rng = random.Random(mix_seed("caption", cfg.seed, micro))
        captions = [
            process_caption(
                it.caption,
                rng,
                shuffle=cfg.shuffle_captions,
                keep_tokens=cfg.keep_tokens,
                tag_dropout=cfg.tag_dropout,
                caption_dropout=cfg.caption_dropout,
            )
            for it in items
        ]
        if self.latents is not None:
            z = torch.stack([self._cached_latent(it) for it in items])
        else:
            z = self._encode_images(torch.stack([load_image(it) for it in items]))
        x0 = normalize_latent(z).to(self.device)
        g = torch.Generator().manual_seed(mix_seed("noise", cfg.seed, micro))
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        sigma = sample_sigmas(
            len(items),
            method=cfg.timestep_sampling,
            shift=cfg.shift,
            logit_mean=cfg.logit_mean,
            logit_std=cfg.logit_std,
            generator=g,
        ).to(self.device)
        texts = self._encode_text(captions)
        controlled = self.trainable.control(items, self.device) if cfg.network == "lllite" else nullcontext()
        with self._autocast(), controlled:
            context = adapter_context(m.adapter, [h for h, _ in texts], [i for _, i in texts])

            def model(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
                return dit_velocity(m.dit, x, s, context, gradient_checkpointing=cfg.gradient_checkpointing)

            return flow_loss(model, x0, noise, sigma)

    def _cached_latent(self, item) -> torch.Tensor:
        z = self.latents.get(item)
        if z is None:  # cache entry vanished (deleted while running): encode again

            z = self._encode_images(load_image(item)[None])[0]
            self.latents.put(item, z)
        return z

    # ------------------------------------------------------------------ one optimizer step
    def _train_step(self) -> float:
        import torch.distributed as dist

        cfg = self.cfg
        total = 0.0
        for a in range(cfg.grad_accum):
            micro = (self.step * cfg.grad_accum + a) * self.world + self.rank
            loss = self._micro_loss(micro) / cfg.grad_accum
            self.scaler.scale(loss).backward()
            total += float(loss.detach())
        if self.world > 1:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad.div_(self.world)
            t = torch.tensor([total])
            dist.all_reduce(t)
            total = float(t) / self.world
        self.scaler.unscale_(self.optimizer)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.ema.update(self.step)
        return total

    # ------------------------------------------------------------------ state
    def _state(self) -> dict:
        return {
            "format": 1,
            "step": self.step,
            "next_micro": self.step * self.cfg.grad_accum * self.world,
            "world_size": self.world,
            "trainable": self.trainable.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict(),
            "rng": ckpt.rng_state(),
        }

    def _restore(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path)
        if state.get("format") != 1:
            raise AnimaError(f"{path}: unsupported checkpoint format")
        self.trainable.load_state_dict(state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.ema.load_state_dict(state["ema"])
        ckpt.set_rng_state(state["rng"])
        self.step = int(state["step"])
        if self.step * self.cfg.grad_accum * self.world != state["next_micro"]:
            self.say(
                f"note: resuming with a different processes x accumulation "
                f"({self.world} x {self.cfg.grad_accum}); the data order continues from step {self.step}"
            )

    def save_checkpoint(self) -> Path | None:
        if self.rank != 0:
            return None
        return ckpt.save_checkpoint(
            self.cfg.output_dir, self.step, self._state(), self.cfg.to_json(), self.cfg.keep_checkpoints
        )

    # ------------------------------------------------------------------ run
    def run(self) -> Path:
        """Train to `cfg.steps` and save the result. A thread count the config sets is this run's
        only: the caller's is restored afterwards (CPU float sums, hence images, depend on it)."""
        threads = torch.get_num_threads()
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> Path:

        self._setup()
        cfg = self.cfg
        resume = ckpt.resolve_resume(cfg.resume, cfg.output_dir)
        if resume is not None:
            self._restore(resume)
            self.say(f"resumed from {resume} at step {self.step}")
        logs = (
            TrainLog(cfg.output_dir, cfg.log_backend, self.step if resume else None)
            if self.rank == 0
            else None
        )
        samples = SampleWriter(cfg, self.models, self.trainable, self.ema.shadow) if self.rank == 0 else None
        smoothed, t_last = None, time.perf_counter()
        images_per_step = cfg.batch_size * cfg.grad_accum * self.world
        try:
            while self.step < cfg.steps:
                lr = self.optimizer.param_groups[0]["lr"]
                loss = self._train_step()
                now = time.perf_counter()
                dt, t_last = now - t_last, now
                smoothed = dt if smoothed is None else 0.9 * smoothed + 0.1 * dt
                epoch = self.step * images_per_step / max(len(self.items) * cfg.repeats, 1)
                if logs is not None and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                    logs.write(
                        {
                            "step": self.step,
                            "loss": f"{loss:.6f}",
                            "lr": f"{lr:.6g}",
                            "seconds_per_step": f"{smoothed:.4f}",
                            "images_per_second": f"{images_per_step / smoothed:.2f}",
                            "epoch": f"{epoch:.3f}",
                        }
                    )
                if self.on_step is not None and self.rank == 0:
                    eta = smoothed * (cfg.steps - self.step)
                    self.on_step(StepInfo(self.step, cfg.steps, loss, lr, smoothed, eta, epoch))
                if samples is not None and cfg.sample_every and self.step % cfg.sample_every == 0:
                    samples.write(self.step)
                    t_last = time.perf_counter()  # sampling time is not training speed
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.save_checkpoint()
                    self._barrier()
        except KeyboardInterrupt:
            if self.rank == 0:
                path = self.save_checkpoint()
                self.say(f"interrupted: saved {path}; continue with --resume")
            raise
        finally:
            if logs is not None:
                logs.close()
        self.save_checkpoint()
        result = self._save_result()
        self._barrier()
        if self._owns_process_group:
            import torch.distributed as dist

            dist.destroy_process_group()
        return result

    def _barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def _save_result(self) -> Path:
        cfg = self.cfg
        path = Path(cfg.output_dir) / f"{cfg.output_name}.safetensors"
        if self.rank != 0:
            return path
        metadata = {
            "anima_trainer": "anima train",
            "anima_base_model_hash": self.models.base_hash,
            "anima_steps": str(self.step),
            "anima_dataset_size": str(len(self.items)),
            "anima_resolution": str(cfg.resolution),
            "anima_ema": str(bool(self.ema)).lower(),
            "ss_base_model_version": "anima",
            "ss_sd_model_hash": self.models.base_hash,
            "ss_steps": str(self.step),
            "ss_num_train_images": str(len(self.items)),
            "ss_learning_rate": str(cfg.lr),
            "ss_seed": str(cfg.seed),
        }
        if cfg.network in ("lora", "lokr"):
            metadata.update({"ss_network_dim": str(cfg.rank), "ss_network_alpha": str(cfg.effective_alpha)})
        with swapped_in(self.trainable.named, self.ema.shadow):
            return self.trainable.save_result(path, metadata)
