"""LLM adapter, context building and the whole prompt -> context path against ComfyUI (spec §3.3, §6).

components/adapter.safetensors pins every adapter stage; e2e/*/outputs.safetensors pin the contexts
that the full text path (tokenizer, Qwen3, adapter, weights, padding) produced for each case.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import TINY, TOKENIZERS, load_st

from anima.model.adapter import LLMAdapter
from anima.model.config import AdapterConfig, TextEncoderConfig
from anima.model.text_encoder import Qwen3TextEncoder
from anima.text.conditioning import Conditioning, TextConditioner, build_context
from anima.text.tokenize import AnimaTokenizer

DIT_FILE = TINY / "weights" / "anima_tiny_dit.safetensors"
TE_FILE = TINY / "weights" / "qwen3_tiny_te.safetensors"
ATOL = 1e-4
CASES = json.loads((TINY / "cases.json").read_text())
E2E = [c for c in CASES["cases"] if c["kind"] in ("txt2img", "img2img")]
_ADAPTER_CASE = next(c for c in CASES["cases"] if c["id"] == "component_adapter")
ADAPTER_PROMPTS = {f"p{c['index']}": c["prompt"] for c in _ADAPTER_CASE["prompts"]}


def load_tiny_adapter(dtype: torch.dtype = torch.float32) -> LLMAdapter:
    prefix = "net.llm_adapter."
    sd = {k[len(prefix) :]: v.to(dtype) for k, v in load_st(DIT_FILE).items() if k.startswith(prefix)}
    cfg = AdapterConfig.from_shapes({k: tuple(v.shape) for k, v in sd.items()})
    with torch.device("meta"):
        adapter = LLMAdapter(cfg)
    adapter.load_state_dict(sd, strict=True, assign=True)
    return adapter.eval()


def load_tiny_te() -> Qwen3TextEncoder:
    sd = {k.removeprefix("model."): v for k, v in load_st(TE_FILE).items()}
    with torch.device("meta"):
        te = Qwen3TextEncoder(TextEncoderConfig.from_shapes({k: tuple(v.shape) for k, v in sd.items()}))
    te.load_state_dict(sd, strict=True, assign=True)
    return te


@pytest.fixture(scope="module")
def adapter() -> LLMAdapter:
    return load_tiny_adapter()


@pytest.fixture(scope="module")
def fx() -> dict:
    return load_st(TINY / "components" / "adapter.safetensors")


@pytest.fixture(scope="module")
def conditioner(adapter: LLMAdapter) -> TextConditioner:
    tok = AnimaTokenizer.from_dirs(TOKENIZERS / "qwen", TOKENIZERS / "t5")
    return TextConditioner(
        tokenizer=tok, text_encoder=load_tiny_te(), adapter=adapter, device="cpu", dtype=torch.float32
    )


# ---------------------------------------------------------------- the adapter module


def test_state_dict_keys_are_checkpoint_keys(adapter: LLMAdapter) -> None:
    keys = {k.removeprefix("net.llm_adapter.") for k in load_st(DIT_FILE) if k.startswith("net.llm_adapter.")}
    assert set(adapter.state_dict()) == keys


@pytest.mark.parametrize("p", ["p0", "p1", "p2"])
def test_adapter_stages_match_fixture(adapter: LLMAdapter, fx: dict, p: str) -> None:
    got: dict[str, torch.Tensor] = {}
    hooks = [
        adapter.embed.register_forward_hook(lambda _m, _i, o: got.__setitem__("embed_out", o)),
        adapter.out_proj.register_forward_hook(lambda _m, _i, o: got.__setitem__("out_proj_out", o)),
    ] + [
        b.register_forward_hook(lambda _m, _i, o, j=j: got.__setitem__(f"block{j}_out", o))
        for j, b in enumerate(adapter.blocks)
    ]
    try:
        with torch.no_grad():
            out = adapter(fx[f"{p}.qwen_hidden"], fx[f"{p}.t5_ids"])
    finally:
        for h in hooks:
            h.remove()
    got["adapter_out"] = out
    context = build_context(out, fx[f"{p}.t5_weights"])
    got["adapter_out_weighted"] = context[:, : out.shape[1]]
    got["context"] = context
    errors = {k: (v - fx[f"{p}.{k}"]).abs().max().item() for k, v in got.items()}
    assert len(errors) == 7
    assert max(errors.values()) <= ATOL, errors


def test_adapter_bf16_runs_in_bf16() -> None:
    adapter = load_tiny_adapter(torch.bfloat16)
    fx = load_st(TINY / "components" / "adapter.safetensors")
    with torch.no_grad():
        out = adapter(fx["p1.qwen_hidden"], fx["p1.t5_ids"])  # fp32 source is cast to the adapter dtype
    assert out.dtype == torch.bfloat16
    assert (out.float() - fx["p1.adapter_out"]).abs().max().item() < 0.1


# ---------------------------------------------------------------- build_context


def test_build_context_weights_and_padding() -> None:
    out = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    w = torch.tensor([[1.0, 1.3, 1.0], [0.5, 1.0, 2.0]])
    ctx = build_context(out, w)
    assert ctx.shape == (2, 512, 4)
    torch.testing.assert_close(ctx[:, :3], out * w[..., None], rtol=0, atol=0)
    assert not ctx[:, 3:].any()


def test_build_context_never_truncates() -> None:
    out = torch.ones(1, 600, 4)
    assert build_context(out, torch.ones(1, 600)).shape == (1, 600, 4)
    assert build_context(out[:, :512], torch.ones(1, 512)).shape == (1, 512, 4)


def test_build_context_casts_weights_to_activation_dtype() -> None:
    out = torch.ones(1, 2, 4, dtype=torch.bfloat16)
    ctx = build_context(out, torch.tensor([[1.3, 1.0]]))
    assert ctx.dtype == torch.bfloat16
    assert ctx[0, 0, 0].item() == torch.tensor(1.3, dtype=torch.bfloat16).item()


def test_build_context_shape_mismatch() -> None:
    with pytest.raises(ValueError):
        build_context(torch.ones(1, 3, 4), torch.ones(1, 2))


# ---------------------------------------------------------------- prompt -> context, end to end


def _assert_context(cond: Conditioning, want: torch.Tensor) -> float:
    n = want.shape[1]
    assert cond.num_tokens == n
    assert cond.context.shape == (1, max(512, n), want.shape[2])
    assert not cond.context[:, n:].any()
    return (cond.context[:, :n] - want).abs().max().item()


@pytest.mark.parametrize("p", ["p0", "p1", "p2"])
def test_prompt_to_component_context(conditioner: TextConditioner, fx: dict, p: str) -> None:
    cond = conditioner.encode(ADAPTER_PROMPTS[p])
    assert cond.t5_ids == fx[f"{p}.t5_ids"][0].tolist()
    assert cond.t5_weights == fx[f"{p}.t5_weights"][0].tolist()
    assert (cond.context - fx[f"{p}.context"]).abs().max().item() <= ATOL


@pytest.mark.parametrize("case", E2E, ids=lambda c: c["id"])
def test_prompt_to_e2e_contexts(conditioner: TextConditioner, case: dict) -> None:
    out = load_st(TINY / case["files"]["outputs"])
    pos, neg = conditioner.encode_many([case["prompt"], case["negative_prompt"]])
    assert pos.t5_ids == case["tokens"]["positive"]["t5_ids"]
    assert neg.qwen_ids == case["tokens"]["negative"]["qwen_ids"]
    errors = [_assert_context(pos, out["context_positive"]), _assert_context(neg, out["context_negative"])]
    assert max(errors) <= ATOL, errors


def test_empty_prompt(conditioner: TextConditioner, fx: dict) -> None:
    cond = conditioner.encode("")
    assert (cond.qwen_ids, cond.t5_ids, cond.t5_weights, cond.num_tokens) == ([151643], [1], [1.0], 1)
    assert _assert_context(cond, fx["p0.context"][:, :1]) <= ATOL


def test_encode_many_encodes_each_prompt_once(conditioner: TextConditioner) -> None:
    calls: list[str] = []

    class CountingTokenizer:
        def tokenize(self, prompt: str):
            calls.append(prompt)
            return conditioner.tokenizer.tokenize(prompt)

    counting = TextConditioner(
        tokenizer=CountingTokenizer(),
        text_encoder=conditioner.text_encoder,
        adapter=conditioner.adapter,
        device="cpu",
        dtype=torch.float32,
    )
    got = counting.encode_many(["a", "b", "a", "", "b"])
    assert calls == ["a", "b", ""]
    assert got[0] is got[2] and got[1] is got[4]
    assert [c.prompt for c in got] == ["a", "b", "a", "", "b"]


def test_long_prompt_warns_and_keeps_every_token(
    conditioner: TextConditioner, caplog: pytest.LogCaptureFixture
) -> None:
    prompt = ", ".join(["masterpiece"] * 300)
    with caplog.at_level(logging.WARNING, logger="anima.text.conditioning"):
        cond = conditioner.encode(prompt)
    assert cond.num_tokens > 512
    assert cond.context.shape[1] == cond.num_tokens
    assert "T5 tokens" in caplog.text
