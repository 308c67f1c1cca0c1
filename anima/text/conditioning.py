"""Prompt string -> DiT cross-attention context (anima-spec §3, §6).

    tokenize (segment-wise, weights) -> Qwen3 last hidden state -> LLM adapter(Qwen states, T5 ids)
    -> x per-token T5 weights -> zero-pad to 512 rows

The zero rows are part of the model input: the DiT cross-attention has no mask, so they take part in
the softmax, and leaving them out changes the image. Prompts longer than 512 T5 tokens are kept whole
(the reference does not truncate), which gives a context with more than 512 rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

MIN_CONTEXT_ROWS = 512


def build_context(
    adapter_out: torch.Tensor, t5_weights: torch.Tensor, min_rows: int = MIN_CONTEXT_ROWS
) -> torch.Tensor:
    """[B, Lt, D] adapter output x [B, Lt] weights, zero-padded to [B, max(min_rows, Lt), D]. Never truncates.

    The weights are cast to the activation dtype before the product, as the reference does.
    """
    if adapter_out.ndim != 3 or t5_weights.shape != adapter_out.shape[:2]:
        raise ValueError(
            f"adapter output {tuple(adapter_out.shape)} and weights {tuple(t5_weights.shape)} do not match"
        )
    weights = t5_weights.to(device=adapter_out.device, dtype=adapter_out.dtype)
    out = adapter_out * weights[..., None]
    missing = min_rows - out.shape[1]
    if missing > 0:
        out = F.pad(out, (0, 0, 0, missing))
    return out


@dataclass(frozen=True)
class Conditioning:
    """One encoded prompt. `context` is [1, max(512, num_tokens), D]; rows past num_tokens are zeros."""

    prompt: str
    context: torch.Tensor
    num_tokens: int
    qwen_ids: list[int]
    t5_ids: list[int]
    t5_weights: list[float]


class TextConditioner:
    """Tokenizer + Qwen3 text encoder + LLM adapter.

    `device`/`dtype` are where and in which dtype the adapter runs and the context is returned (the DiT
    compute dtype). The text encoder stays where it was loaded and computes in its own precision
    (fp32 activations, see `anima.model.text_encoder`); its output is cast to `dtype` before the
    adapter, as the reference does.
    """

    def __init__(
        self,
        *,
        tokenizer,
        text_encoder: torch.nn.Module,
        adapter: torch.nn.Module,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.adapter = adapter
        self.device = torch.device(device)
        self.dtype = dtype

    def move_to(self, device: torch.device | str) -> None:
        """Run the adapter and return contexts on `device` (the pipeline moves the modules)."""
        self.device = torch.device(device)

    def attach_text_encoder(self, text_encoder: torch.nn.Module) -> None:
        self.text_encoder = text_encoder

    def detach_text_encoder(self) -> None:
        """Forget the text encoder (the pipeline released it to free memory); encoding needs it back."""
        self.text_encoder = None

    @torch.no_grad()
    def encode(self, prompt: str, *, zero_states: bool = False) -> Conditioning:
        """`zero_states`: zero the Qwen3 hidden states before the adapter, as ComfyUI's
        ConditioningZeroOut does for Anima (it zeroes the cross-attention tensor, which for Anima is
        the Qwen3 output; the T5 ids and weights stay, so the adapter still runs and the context is
        not zero)."""
        return self.encode_many([prompt], zero_states=zero_states)[0]

    @torch.no_grad()
    def encode_many(self, prompts: Iterable[str], *, zero_states: bool = False) -> list[Conditioning]:
        """Encode each prompt; the distinct ones go through the text encoder together (`encode_requests`)."""
        return self.encode_requests([(p, zero_states) for p in prompts])

    @torch.no_grad()
    def encode_requests(self, requests: Sequence[tuple[str, bool]]) -> list[Conditioning]:
        """(prompt, zero_states) pairs -> their conditionings. Every distinct text goes through the
        text encoder once, all of them in one pass (`Qwen3TextEncoder.encode_packed`: on a CPU the
        pass costs about the same for one prompt as for a few, since it is bound by reading the
        weights); a text asked for plain and zeroed is encoded once."""
        if not requests:
            return []
        if self.text_encoder is None:
            raise RuntimeError("the text encoder was released; attach it again before encoding")
        texts = list(dict.fromkeys(p for p, _ in requests))
        tokens = dict(zip(texts, (self.tokenizer.tokenize(p) for p in texts), strict=True))
        states = self.text_encoder.encode_packed([tokens[p].qwen_ids for p in texts])
        hidden = dict(zip(texts, states, strict=True))
        done = {r: self._condition(r[0], tokens[r[0]], hidden[r[0]], r[1]) for r in dict.fromkeys(requests)}
        return [done[r] for r in requests]

    def _condition(self, prompt: str, tokens, hidden: torch.Tensor, zero_states: bool) -> Conditioning:
        """One prompt's Qwen3 states [Lq, D] -> its DiT context, through the adapter."""
        n = len(tokens.t5_ids)
        if n > MIN_CONTEXT_ROWS:
            log.warning(
                "prompt has %d T5 tokens (more than %d); it is kept whole, giving a %d-row context",
                n,
                MIN_CONTEXT_ROWS,
                n,
            )
        hidden = hidden[None].to(device=self.device, dtype=self.dtype)
        if zero_states:
            hidden = torch.zeros_like(hidden)
        t5_ids = torch.tensor([tokens.t5_ids], dtype=torch.long, device=self.device)
        out = self.adapter(hidden, t5_ids)
        weights = torch.tensor([tokens.t5_weights], dtype=torch.float32, device=self.device)
        context = build_context(out, weights)
        return Conditioning(
            prompt=prompt,
            context=context,
            num_tokens=n,
            qwen_ids=tokens.qwen_ids,
            t5_ids=tokens.t5_ids,
            t5_weights=tokens.t5_weights,
        )
