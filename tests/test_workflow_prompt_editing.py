"""Prompt editing: A1111 syntax -> one prompt per step; each distinct text encoded once."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, TOKENIZERS

from anima.pipeline import Pipeline
from anima.recipe import Recipe
from anima.sampling.denoiser import StepIndex
from anima.text.prompt_editing import has_editing, prompt_at, prompts_per_step, switch_step

W = TINY / "weights"


@pytest.mark.parametrize(
    ("prompt", "steps", "expected"),
    [
        ("[a:b:0.5]", 10, ["a"] * 5 + ["b"] * 5),
        ("x, [a:b:0.4]", 10, ["x, a"] * 4 + ["x, b"] * 6),
        ("[a:0.3]", 10, [""] * 3 + ["a"] * 7),
        ("[a::0.6]", 10, ["a"] * 6 + [""] * 4),
        ("[a|b]", 5, ["a", "b", "a", "b", "a"]),
        ("[a|b|c] d", 4, ["a d", "b d", "c d", "a d"]),
        ("[a:b:3]", 6, ["a"] * 3 + ["b"] * 3),  # 1 or more: an absolute step
        ("[a:b: 0.5 ]", 4, ["a", "a", "b", "b"]),
        ("[[x|y]:z:0.5]", 4, ["x", "y", "z", "z"]),  # nested
        ("[(red:1.2):blue:0.5]", 2, ["(red:1.2)", "blue"]),  # weights inside keep their colon
    ],
)
def test_schedules(prompt: str, steps: int, expected: list[str]) -> None:
    assert prompts_per_step(prompt, steps) == expected


@pytest.mark.parametrize(
    "prompt",
    [
        "masterpiece, (1girl:1.3), [blue hair], \\(artist\\)",  # the fixture prompt: ComfyUI plain text
        "[blue hair]",
        "[a:b]",  # no number: literal
        "[a|b:0.5]",  # mixed separators: literal
        "\\[a:b:0.5\\]",  # escaped brackets
        "(a:b:0.5)",  # parentheses are ComfyUI weights, never editing
        "[unclosed: 0.5",
        "[a:-1]",
    ],
)
def test_everything_else_stays_byte_for_byte(prompt: str) -> None:
    assert not has_editing(prompt)
    assert prompts_per_step(prompt, 7) == [prompt] * 7


def test_literal_brackets_around_editing_keep_the_brackets() -> None:
    assert prompts_per_step("[hair [red|blue]]", 2) == ["[hair red]", "[hair blue]"]


def test_switch_step_rule() -> None:
    assert [switch_step(w, 10) for w in (0.0, 0.05, 0.5, 0.99, 1, 3, 25)] == [0, 0, 5, 9, 1, 3, 10]
    assert prompt_at("[a:b:0.5]", 5, 10) == "a" and prompt_at("[a:b:0.5]", 6, 10) == "b"


def test_step_index_from_sigma() -> None:
    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0])
    step = StepIndex(sigmas)
    assert [step(s) for s in (1.0, 0.9999, 0.8, 0.6, 0.5, 0.2, 0.1)] == [0, 0, 1, 1, 2, 3, 3]


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline.from_files(
        W / "anima_tiny_dit.safetensors", W / "qwen3_tiny_te.safetensors", W / "wan21_tiny_vae.safetensors",
        tokenizer_dir=TOKENIZERS, device="cpu", dtype="fp32", release_text_encoder=False,  # tests encode too
    )  # fmt: skip


class Recorder(torch.nn.Module):
    """Wraps the DiT and records the context of every call (other attributes: the DiT's)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.contexts: list[torch.Tensor] = []

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, x, sigma, context, **kwargs):
        self.contexts.append(context.detach().clone())
        return self.inner(x, sigma, context, **kwargs)


def _close(x: torch.Tensor, y: torch.Tensor) -> bool:
    return torch.allclose(x, y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_each_model_call_gets_its_steps_conditioning(pipe: Pipeline, cfg: float) -> None:
    a, b = pipe.conditioner.encode("a cat").context, pipe.conditioner.encode("a dog").context
    encoded: list[str] = []
    neg = f"ugly, cfg {cfg:g}"
    real_encode, real_dit = pipe.conditioner.encode_requests, pipe.dit
    pipe.conditioner.encode_requests = lambda rs: (encoded.extend(p for p, _ in rs), real_encode(rs))[1]
    pipe.dit = rec = Recorder(real_dit)
    try:
        # A negative of its own per case: the pipeline keeps recent passes, and this one must run.
        recipe = Recipe("[a cat:a dog:0.5]", neg, width=64, height=64, steps=10, cfg=cfg, sampler="euler")
        pipe.generate(recipe)
    finally:
        pipe.conditioner.encode_requests, pipe.dit = real_encode, real_dit
    assert len(rec.contexts) == 10
    which = []
    for ctx in rec.contexts:
        pos = ctx[:1]  # with CFG the batch is [cond, uncond]
        # The run encodes its three texts in one pass: equal to each alone up to summation order.
        which.append("a" if _close(pos, a) else "b" if _close(pos, b) else "?")
    print(f"cfg {cfg}: model calls saw {''.join(which)}")
    assert which == ["a"] * 5 + ["b"] * 5
    assert sorted(encoded) == ["a cat", "a dog", neg]  # each distinct text encoded once
