"""The model calls of a training step: text -> context, and the DiT velocity on a padded context.

**Exact and cheaper padding.** At inference the context is zero-padded to 512 rows and the DiT's
cross-attention has no mask, so the zero rows take part in every softmax (`anima.text.conditioning`).
Training must see the same thing, but projecting ~500 zero rows per sample to keys and values is
most of a small model's step. Those rows project to exactly zero keys and values (the projections
have no bias, and RMSNorm(0) = 0), so here each block's keys/values are computed from the real rows
only and then zero-padded to 512 rows, and handed to the block through its ``kv`` argument (the
path `MiniTrainDIT.prepare_context` feeds at inference). Same numbers, a fraction of the work;
tests/test_train_forward.py compares it with the plain padded forward. A block whose
cross-attention module has been replaced gets the padded context the ordinary way.

The block loop is the one of `MiniTrainDIT.forward`, written with its public stage methods so that
gradient checkpointing can wrap each block.

**Text.** The adapter has no attention mask, so prompts of different lengths cannot be batched by
padding them; they are grouped by (Qwen length, T5 length) and each group runs as one batch. Rows
past a prompt's own length are zeros, exactly like the 512-row padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from anima.model.dit import Attention
from anima.text.conditioning import MIN_CONTEXT_ROWS


def adapter_context(
    adapter: torch.nn.Module, hiddens: Sequence[torch.Tensor], t5_ids: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Per-sample Qwen3 states [Lq_i, D] and T5 ids [Lt_i] -> context [B, max Lt_i, C] (zero rows after Lt_i).

    All prompt weights are 1 in training (captions are literal text).
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (h, ids) in enumerate(zip(hiddens, t5_ids, strict=True)):
        groups.setdefault((h.shape[0], ids.shape[0]), []).append(i)
    device = adapter.embed.weight.device
    rows = max(ids.shape[0] for ids in t5_ids)
    parts: list[tuple[list[int], torch.Tensor]] = []
    for (_, lt), idx in sorted(groups.items()):
        src = torch.stack([hiddens[i] for i in idx]).to(device)
        ids = torch.stack([t5_ids[i] for i in idx]).to(device)
        out = adapter(src, ids)
        parts.append((idx, F.pad(out, (0, 0, 0, rows - lt))))
    order = [i for idx, _ in parts for i in idx]
    stacked = torch.cat([p for _, p in parts])
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return stacked[inverse.to(stacked.device)]


def _padded_kv(attn: torch.nn.Module, context: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    k, v = attn.project_kv(context)  # [B, H, L, hd]
    pad = (0, 0, 0, rows - k.shape[2])
    return F.pad(k, pad), F.pad(v, pad)


def dit_velocity(
    dit: torch.nn.Module,
    x: torch.Tensor,
    sigma: torch.Tensor,
    context: torch.Tensor,
    *,
    pad_rows: int = MIN_CONTEXT_ROWS,
    gradient_checkpointing: bool = False,
) -> torch.Tensor:
    """== ``dit(x, sigma, zero_pad(context, pad_rows))`` (the inference call), computed cheaply.

    x: [B, 16, 1, h, w] model-space latent; sigma: [B] raw; context: [B, L, C] with L <= pad_rows.
    """

    t, h, w = x.shape[2:]
    rows = max(pad_rows, context.shape[1])
    context = context.to(dit.compute_dtype)
    padded: torch.Tensor | None = None
    tokens = dit.embed(x)
    grid = tuple(tokens.shape[1:4])
    cond = dit.time_embedding(sigma.to(x.device).reshape(-1))
    rope = dit.rope(grid, x.device)
    stream = tokens.flatten(1, 3).to(dit._stream_dtype)
    for block in dit.blocks:
        if type(block.cross_attn) is Attention and hasattr(block.cross_attn, "project_kv"):
            kv = _padded_kv(block.cross_attn, context, rows)
            ctx = context
        else:
            kv = None
            if padded is None:
                padded = F.pad(context, (0, 0, 0, rows - context.shape[1]))
            ctx = padded
        if gradient_checkpointing and torch.is_grad_enabled():
            stream = checkpoint(block, stream, cond, ctx, rope, kv, use_reentrant=False)
        elif kv is None:
            stream = block(stream, cond, ctx, rope)
        else:
            stream = block(stream, cond, ctx, rope, kv)
    y = dit.final_layer(stream, cond)
    return dit.unpatchify(y, grid)[:, :, :t, :h, :w].to(x.dtype)


def encode_captions(
    text_encoder: torch.nn.Module, tokenizer, captions: Sequence[str], *, grad: bool = False
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Captions -> [(Qwen3 hidden [Lq, D] fp32, T5 ids [Lt])], tokenized literally (no weight syntax).

    Training captions are plain text, as in every Anima trainer: parentheses in a tag are part of it.
    With `grad` (text-encoder LoRA) the encoder runs with autograd; otherwise under no_grad.
    """
    out = []
    device = text_encoder.embed_tokens.weight.device
    for caption in captions:
        qwen = tokenizer.qwen_word_ids(caption) or [tokenizer.qwen_pad_id]
        t5 = tokenizer.t5_word_ids(caption) + [tokenizer.t5_eos_id]
        ids = torch.tensor([qwen], dtype=torch.long, device=device)
        with torch.set_grad_enabled(grad):
            embeds = text_encoder.embed_tokens(ids).to(text_encoder.compute_dtype)
            hidden = text_encoder(inputs_embeds=embeds, use_cache=False).last_hidden_state[0]
        out.append((hidden.float(), torch.tensor(t5, dtype=torch.long)))
    return out
