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

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen3Config, Qwen3Model
from transformers.masking_utils import create_causal_mask
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

    cast: torch.Tensor | None = None  # the weight already cast, while `_cast_once` holds it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        weight = (
            self.cast if self.cast is not None and self.cast.dtype == x.dtype else self.weight.to(x.dtype)
        )
        return F.linear(x, weight, bias)


@contextmanager
def _cast_once(layer: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Cast the layer's `_CastLinear` weights to `dtype` once for every prompt run through it now;
    one layer's copy at a time (63 MB for Qwen3-0.6B in fp32), dropped on exit."""
    linears = [m for m in layer.modules() if isinstance(m, _CastLinear) and m.weight.dtype != dtype]
    for m in linears:
        m.cast = m.weight.to(dtype)
    try:
        yield
    finally:
        for m in linears:
            m.cast = None


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

    @torch.no_grad()
    def encode_many(self, ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """Several prompts (each [1, L_i]) -> their hidden states, the same numbers as `encode` of
        each, computed layer by layer so that each layer's weights are cast from the file's bf16 to
        fp32 once for all prompts (on a CPU, for a few dozen tokens, that cast and its memory
        traffic are most of the encoder's time: a positive + negative pair pays it once, not twice).
        The loop is `Qwen3Model.forward`'s, without a cache; tests/test_text_encoder.py pins the
        equality with `encode`."""
        if len(ids) < 2 or not all(i.ndim == 2 and i.shape[1] > 0 for i in ids):
            return [self.encode(i) for i in ids]
        states = []
        for i in ids:
            h = self.embed_tokens(i).to(self.compute_dtype)
            pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
            mask = create_causal_mask(
                config=self.config, inputs_embeds=h, attention_mask=None, cache=None, position_ids=pos
            )
            states.append([h, pos, mask, self.rotary_emb(h, pos)])
        for j, layer in enumerate(self.layers[: self.config.num_hidden_layers]):
            if self.config.layer_types[j] != "full_attention":  # Qwen3-0.6B has no sliding layers
                return [self.encode(i) for i in ids]
            with _cast_once(layer, self.compute_dtype):
                for st in states:
                    st[0] = layer(st[0], attention_mask=st[2], position_embeddings=st[3], position_ids=st[1],
                                  cache=None, use_cache=False)  # fmt: skip
        return [self.norm(st[0]) for st in states]


def _rope_to_weights_device(module: torch.nn.Module, incompatible_keys) -> None:
    # The RoPE buffer was built on the CPU; follow the weights to wherever they were loaded.
    if isinstance(module, Qwen3TextEncoder):
        module.rotary_emb.to(module.norm.weight.device)
