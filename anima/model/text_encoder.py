"""Qwen3 text encoder (Qwen3-0.6B-Base for Anima), used as a frozen feature extractor (spec §3.1).

The module *is* a ``transformers.Qwen3Model`` (so its state-dict keys are the checkpoint keys with
``model.`` stripped) built from an explicit `Qwen3Config`: no hub access, no config.json needed.

Precision: the reference keeps the bf16 weights but runs the encoder with fp32 activations, casting
each weight to fp32 as it is used. Here the transformer layers and the final norm are *stored* in the
compute dtype (fp32 by default), which gives the same numbers (bf16 -> fp32 is exact) for 4 bytes per
layer parameter: about 1.8 GB for the 0.6B model instead of 0.9 GB. The 151936-row embedding table
stays in the file dtype, since a lookup followed by a cast is exact and it is a quarter of the model.
The upcast happens right after `load_state_dict` (a load post-hook), so a meta build followed by a
strict ``assign=True`` load ends in the right state with no extra call.
"""

from __future__ import annotations

import torch
from transformers import Qwen3Config, Qwen3Model
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from anima.config import TextEncoderConfig


def qwen3_config(cfg: TextEncoderConfig) -> Qwen3Config:
    """The transformers config for `cfg`: every field explicit, nothing read from a hub."""
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
        bos_token_id=151643,
        eos_token_id=151643,
        attn_implementation="sdpa",
    )


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
        self.register_load_state_dict_post_hook(_upcast_after_load)
        self.requires_grad_(False)
        self.eval()

    def to_compute_dtype(self) -> Qwen3TextEncoder:
        """Cast everything except the embedding table to `compute_dtype` (in place); returns self.

        Also puts the RoPE buffer on the device the weights were loaded to (it was built on the CPU).
        """
        for name, module in self.named_children():
            if name not in ("embed_tokens", "rotary_emb"):
                module.to(self.compute_dtype)
        self.rotary_emb.to(self.norm.weight.device)
        return self

    @torch.no_grad()
    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: LongTensor [B, L] on the encoder's device -> hidden states [B, L, hidden], compute dtype.

        No attention mask: every row is a whole prompt (the reference encodes prompts one at a time).
        """
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"expected token ids of shape [B, L>0], got {tuple(ids.shape)}")
        dtype = self.norm.weight.dtype
        embeds = self.embed_tokens(ids).to(dtype)
        out = self(inputs_embeds=embeds, use_cache=False)
        return out.last_hidden_state


def _upcast_after_load(module: torch.nn.Module, incompatible_keys) -> None:
    if isinstance(module, Qwen3TextEncoder):
        module.to_compute_dtype()
