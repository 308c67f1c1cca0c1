"""Qwen3 text encoder (Qwen3-0.6B-Base for Anima), used as a frozen feature extractor (anima-spec §3.1).

The module *is* a ``transformers.Qwen3Model`` (so its state-dict keys are the checkpoint keys with
``model.`` stripped) built from an explicit `Qwen3Config`: no hub access, no config.json needed.

Precision: the reference keeps the bf16 weights but runs the encoder with fp32 activations, casting
each weight to fp32 as it is used. So does this module: every weight stays in the file's dtype (for a
bf16 file, zero-copy views of the memory-mapped file: 1.2 GB for the 0.6B model instead of 2.4 GB in
fp32), each projection casts its weight to the activations' dtype as it runs (`_CastLinear`; bf16 ->
fp32 is exact, so the numbers equal those of fp32-stored weights), and RMSNorm's ``weight * x`` promotes
to fp32 by itself. The transient copy is one matrix at a time.
"""

from __future__ import annotations

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


class _CastLinear(nn.Linear):
    """A Linear whose weight stays in its stored dtype and is cast to the input's dtype per call."""

    casts_weight = True  # read by anima.lora.apply: a merged LoRA may keep an fp32 weight here
    compute_dtype: torch.dtype = torch.float32  # what it runs in (LoRAs placed on it use this too)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


def _cast_linears(root: nn.Module, compute_dtype: torch.dtype) -> None:
    """Swap every nn.Linear under `root` for a `_CastLinear` of the same shape (same state-dict keys)."""
    for name, child in list(root.named_children()):
        if type(child) is nn.Linear:
            new = _CastLinear(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                device=child.weight.device,
                dtype=child.weight.dtype,
            )
            new.load_state_dict(child.state_dict(), assign=True)
            new.compute_dtype = compute_dtype
            setattr(root, name, new)
        else:
            _cast_linears(child, compute_dtype)


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
        _cast_linears(self.layers, compute_dtype)
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


def _rope_to_weights_device(module: torch.nn.Module, incompatible_keys) -> None:
    # The RoPE buffer was built on the CPU; follow the weights to wherever they were loaded.
    if isinstance(module, Qwen3TextEncoder):
        module.rotary_emb.to(module.norm.weight.device)
