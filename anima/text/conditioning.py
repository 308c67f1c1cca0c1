"""Prompt string -> DiT cross-attention context (anima-spec §3, §6).

    tokenize (segment-wise, weights) -> Qwen3 last hidden state -> LLM adapter(Qwen states, T5 ids)
    -> x per-token T5 weights -> zero-pad to 512 rows

The zero rows are part of the model input: the DiT cross-attention has no mask, so they take part in
the softmax, and leaving them out changes the image. Prompts longer than 512 T5 tokens are kept whole
(the reference does not truncate), which gives a context with more than 512 rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
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
    def encode(self, prompt: str) -> Conditioning:
        if self.text_encoder is None:
            raise RuntimeError("the text encoder was released; attach it again before encoding")
        tokens = self.tokenizer.tokenize(prompt)
        n = len(tokens.t5_ids)
        if n > MIN_CONTEXT_ROWS:
            log.warning(
                "prompt has %d T5 tokens (more than %d); it is kept whole, giving a %d-row context",
                n,
                MIN_CONTEXT_ROWS,
                n,
            )
        te_device = self.text_encoder.embed_tokens.weight.device
        qwen_ids = torch.tensor([tokens.qwen_ids], dtype=torch.long, device=te_device)
        hidden = self.text_encoder.encode(qwen_ids).to(device=self.device, dtype=self.dtype)
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

    def encode_many(self, prompts: Iterable[str]) -> list[Conditioning]:
        """Encode each prompt, running the models once per distinct prompt."""
        done: dict[str, Conditioning] = {}
        out = []
        for p in prompts:
            if p not in done:
                done[p] = self.encode(p)
            out.append(done[p])
        return out
