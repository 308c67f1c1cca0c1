"""Qwen3 text encoder (Qwen3-0.6B-Base for Anima), used as a frozen feature extractor (anima-spec §3.1).

The module *is* a ``transformers.Qwen3Model`` (so its state-dict keys are the checkpoint keys with
``model.`` stripped) built from an explicit `Qwen3Config`: no hub access, no config.json needed.

Precision: the reference keeps the bf16 weights but runs the encoder with fp32 activations, casting
each weight to fp32 as it is used. So does this module: every weight stays in the file's dtype (for a
bf16 file, zero-copy views of the memory-mapped file: 1.2 GB for the 0.6B model instead of 2.4 GB in
fp32), each projection casts its weight to the activations' dtype as it runs (`_CastLinear`; bf16 ->
fp32 is exact, so the numbers equal those of fp32-stored weights), and RMSNorm's ``weight * x`` promotes
to fp32 by itself. The transient copy is one matrix at a time, written into a buffer kept per shape
(`CastScratch`): a fresh 12 MB tensor per projection costs page faults on every call, and on a CPU
the cast then took longer than the matmul it feeds (0.39 s of 0.66 s per prompt, 0.6B model, 2 cores).

Speed on a CPU is bound by the weights, not the tokens: a prompt of 20 tokens reads and casts all
440M projection weights. `encode_packed` therefore runs several prompts as one sequence (positions
restarting per prompt, a block-diagonal causal mask), so a prompt pair costs one pass instead of two
(0.79 s against 1.1 s here); each prompt's states equal its own pass up to the matmul's summation order.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen3Config, Qwen3Model
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from anima.model.config import TextEncoderConfig

QWEN3_EOS_ID = 151643  # <|endoftext|>, Qwen3's bos and eos


def qwen3_config(cfg: TextEncoderConfig) -> Qwen3Config:
    """The transformers config for `cfg`: every field explicit, nothing read from a hub."""
    # The encoder never uses special tokens; a small vocabulary (the demo's) has no id for them, and
    # transformers warns on every build about an id outside the vocabulary.
    special = QWEN3_EOS_ID if QWEN3_EOS_ID < cfg.vocab_size else None
    return Qwen3Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,  # explicit: Qwen3's head dim is not hidden / heads
        hidden_act="silu",
        max_position_embeddings=32768,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        attention_bias=False,
        attention_dropout=0.0,
        use_sliding_window=False,
        tie_word_embeddings=True,
        use_cache=False,
        bos_token_id=special,
        eos_token_id=special,
        attn_implementation="sdpa",
    )


class CastScratch:
    """One reusable buffer per (shape, dtype, device) for weights cast per call, shared by the
    encoder's projections; a lock keeps two threads encoding at once from sharing a buffer."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}
        self.lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> CastScratch:
        return CastScratch()  # a copied encoder gets its own (empty) buffers and lock

    def cast(self, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`w` in `dtype`, in this scratch's buffer for its shape (valid until the next cast)."""
        key = (tuple(w.shape), dtype, w.device)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(w.shape, dtype=dtype, device=w.device)
        return buf.copy_(w)


class _CastLinear(nn.Linear):
    """A Linear whose weight stays in its stored dtype and is cast to the input's dtype per call."""

    casts_weight = True  # read by anima.lora.apply: a merged LoRA may keep an fp32 weight here

    def __init__(self, *args, compute_dtype: torch.dtype, scratch: CastScratch, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.compute_dtype = compute_dtype  # what it runs in (LoRAs placed on it use this too)
        self._scratch = scratch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.weight.dtype == x.dtype:
            return F.linear(x, self.weight, bias)
        if torch.is_grad_enabled():  # autograd keeps the cast weight for backward: no shared buffer
            return F.linear(x, self.weight.to(x.dtype), bias)
        with self._scratch.lock:
            return F.linear(x, self._scratch.cast(self.weight, x.dtype), bias)


def _cast_linears(root: nn.Module, compute_dtype: torch.dtype, scratch: CastScratch) -> None:
    """Swap every nn.Linear under `root` for a `_CastLinear` of the same shape (same state-dict keys)."""
    for name, child in list(root.named_children()):
        if type(child) is nn.Linear:
            new = _CastLinear(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                device=child.weight.device,
                dtype=child.weight.dtype,
                compute_dtype=compute_dtype,
                scratch=scratch,
            )
            new.load_state_dict(child.state_dict(), assign=True)
            setattr(root, name, new)
        else:
            _cast_linears(child, compute_dtype, scratch)


class Qwen3TextEncoder(Qwen3Model):
    """`encode(ids)` -> last hidden state after the final RMSNorm, causal attention, no special tokens."""

    def __init__(self, cfg: TextEncoderConfig, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__(qwen3_config(cfg))
        self.anima_config = cfg
        self.compute_dtype = compute_dtype
        # The RoPE inverse frequencies are a non-persistent buffer: a checkpoint never fills them, so
        # they must hold real values even when the rest of the module is built on the meta device.
        with torch.device("cpu"):
            self.rotary_emb = Qwen3RotaryEmbedding(config=self.config)
        _cast_linears(self.layers, compute_dtype, CastScratch())
        self.register_load_state_dict_post_hook(_rope_to_weights_device)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: LongTensor [B, L] on the encoder's device -> hidden states [B, L, hidden], compute dtype.

        No attention mask: every row is a whole prompt (the reference encodes prompts one at a time).
        """
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"expected token ids of shape [B, L>0], got {tuple(ids.shape)}")
        embeds = self.embed_tokens(ids).to(self.compute_dtype)
        out = self(inputs_embeds=embeds, use_cache=False)
        return out.last_hidden_state

    @torch.no_grad()
    def encode_packed(self, prompts: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Token ids of several prompts -> each prompt's hidden states [L_i, hidden], from one pass.

        The prompts are concatenated into one sequence; positions restart at 0 for each, and each
        token attends only to the earlier tokens of its own prompt, so every prompt is encoded as if
        alone (the reference's one-at-a-time encoding) while each weight is read once for all of them.
        """
        lengths = [len(p) for p in prompts]
        if not lengths or min(lengths) == 0:
            raise ValueError(f"expected one or more non-empty prompts, got lengths {lengths}")
        device = self.embed_tokens.weight.device
        ids = torch.tensor([t for p in prompts for t in p], dtype=torch.long, device=device)[None]
        positions = torch.cat([torch.arange(n, device=device) for n in lengths])[None]
        owner = torch.cat([torch.full((n,), i, device=device) for i, n in enumerate(lengths)])
        # [1, 1, L, L], True = may attend: same prompt and not later (causal within each prompt).
        mask = (owner[:, None] == owner[None, :]) & (positions[0][:, None] >= positions[0][None, :])
        embeds = self.embed_tokens(ids).to(self.compute_dtype)
        out = self(
            inputs_embeds=embeds, attention_mask=mask[None, None], position_ids=positions, use_cache=False
        )
        return list(out.last_hidden_state[0].split(lengths))


def _rope_to_weights_device(module: torch.nn.Module, incompatible_keys) -> None:
    # The RoPE buffer was built on the CPU; follow the weights to wherever they were loaded.
    if isinstance(module, Qwen3TextEncoder):
        module.rotary_emb.to(module.norm.weight.device)
