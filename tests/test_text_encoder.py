"""Qwen3 text encoder against ComfyUI's hidden states (components/text_encoder.safetensors, spec §3.1)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, load_st

from anima.model.config import TextEncoderConfig
from anima.model.text_encoder import Qwen3TextEncoder

TE_FILE = TINY / "weights" / "qwen3_tiny_te.safetensors"
ATOL = 1e-4
PROMPTS = ["p0", "p1", "p2"]


def load_tiny_te() -> Qwen3TextEncoder:
    """Meta build + strict assign load of the bf16 tiny checkpoint (file keys minus ``model.``)."""
    sd = {k.removeprefix("model."): v for k, v in load_st(TE_FILE).items()}
    cfg = TextEncoderConfig.from_shapes({k: tuple(v.shape) for k, v in sd.items()})
    with torch.device("meta"):
        te = Qwen3TextEncoder(cfg)
    te.load_state_dict(sd, strict=True, assign=True)
    return te


@pytest.fixture(scope="module")
def te() -> Qwen3TextEncoder:
    return load_tiny_te()


@pytest.fixture(scope="module")
def fx() -> dict:
    return load_st(TINY / "components" / "text_encoder.safetensors")


def test_state_dict_keys_are_checkpoint_keys(te: Qwen3TextEncoder) -> None:
    file_keys = {k.removeprefix("model.") for k in load_st(TE_FILE)}
    assert set(te.state_dict()) == file_keys


def test_precision_policy(te: Qwen3TextEncoder) -> None:
    # Every weight stays as stored (bf16: half the memory of an fp32 copy); activations are fp32,
    # each weight cast to fp32 as it is used (exact, as the reference does); nothing left on meta.
    for name, p in te.named_parameters():
        assert not p.is_meta, name
        assert p.dtype == torch.bfloat16, name
    dtypes: set[torch.dtype] = set()
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
        for m in te.modules()
        if isinstance(m, torch.nn.Linear)
    ]
    try:
        assert te.encode(torch.tensor([[1, 2, 3]])).dtype == torch.float32
    finally:
        for h in hooks:
            h.remove()
    assert dtypes == {torch.float32}
    assert not te.rotary_emb.inv_freq.is_meta
    assert te.config._attn_implementation == "sdpa"
    assert te.config.head_dim == 64 and te.config.num_attention_heads == 2  # head dim is explicit


@pytest.mark.parametrize("p", PROMPTS)
def test_hidden_states_match_fixture(te: Qwen3TextEncoder, fx: dict, p: str) -> None:
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        layer.register_forward_hook(
            lambda _m, _i, out, j=j: captured.__setitem__(
                f"layer{j}_out", out[0] if isinstance(out, tuple) else out
            )
        )
        for j, layer in enumerate(te.layers)
    ]
    try:
        ids = fx[f"{p}.qwen_ids"]
        hidden = te.encode(ids)
    finally:
        for h in hooks:
            h.remove()
    captured["embeddings"] = te.embed_tokens(ids).float()
    captured["hidden"] = hidden
    assert hidden.dtype == torch.float32 and hidden.shape == fx[f"{p}.hidden"].shape
    errors = {k: (v - fx[f"{p}.{k}"]).abs().max().item() for k, v in captured.items()}
    assert set(errors) == {"embeddings", "layer0_out", "layer1_out", "hidden"}
    assert max(errors.values()) <= ATOL, errors


def test_causal(te: Qwen3TextEncoder, fx: dict) -> None:
    # With a causal mask, a prefix's states do not depend on what follows it.
    ids = fx["p1.qwen_ids"]
    full = te.encode(ids)
    prefix = te.encode(ids[:, :5])
    torch.testing.assert_close(prefix, full[:, :5], atol=1e-5, rtol=1e-5)


def test_batch_rows_are_independent(te: Qwen3TextEncoder, fx: dict) -> None:
    ids = fx["p1.qwen_ids"]
    both = te.encode(torch.cat([ids, ids.flip(1)]))
    torch.testing.assert_close(both[:1], te.encode(ids), atol=1e-5, rtol=1e-5)


def test_packed_prompts_are_encoded_as_if_alone(te: Qwen3TextEncoder, fx: dict) -> None:
    # One pass over several prompts (what a prompt pair costs on a CPU) gives each prompt the states
    # of its own pass: positions restart per prompt and no token sees another prompt's tokens.
    ids = [fx[f"{p}.qwen_ids"][0].tolist() for p in PROMPTS]
    packed = te.encode_packed(ids)
    assert [h.shape[0] for h in packed] == [len(i) for i in ids]
    for p, h in zip(PROMPTS, packed, strict=True):
        assert (h - fx[f"{p}.hidden"][0]).abs().max().item() <= ATOL, p
    # The same prompt with another partner: the same states, up to the matmul's summation order.
    alone = te.encode_packed(ids[1:2])[0]
    torch.testing.assert_close(te.encode_packed([ids[1], ids[0]])[0], alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        te.encode_packed([ids[0], []])


def test_cast_buffers_are_reused_and_grad_keeps_its_own_copy(te: Qwen3TextEncoder, fx: dict) -> None:
    # Without grad the projections cast into one buffer per shape (no fresh 12 MB tensor per call);
    # with grad (text-encoder LoRA training) autograd keeps the cast weight, so each gets its own.
    ids = fx["p0.qwen_ids"]
    first = te.encode(ids)
    scratch = te.layers[0].mlp.up_proj._scratch
    assert all(m._scratch is scratch for m in te.modules() if hasattr(m, "_scratch"))
    buffers = {id(b) for b in scratch._buffers.values()}
    torch.testing.assert_close(te.encode(ids), first, atol=0, rtol=0)
    assert {id(b) for b in scratch._buffers.values()} == buffers
    x = te.embed_tokens(ids).float().requires_grad_()
    te(inputs_embeds=x, use_cache=False).last_hidden_state.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_loader_builds_this_module(fx: dict) -> None:
    """The checkpoint loader's meta build + strict assign ends in the same precision policy."""
    from anima.weights.loading import load_text_encoder

    te = load_text_encoder(TE_FILE)
    assert isinstance(te, Qwen3TextEncoder)
    assert te.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16  # as stored, zero-copy
    hidden = te.encode(fx["p2.qwen_ids"])
    assert (hidden - fx["p2.hidden"]).abs().max().item() <= ATOL


def test_rejects_bad_ids(te: Qwen3TextEncoder) -> None:
    with pytest.raises(ValueError):
        te.encode(torch.zeros(1, 0, dtype=torch.long))


def test_special_token_ids_only_when_the_vocabulary_has_them() -> None:
    from dataclasses import replace

    from anima.demo.spec import text_encoder_config
    from anima.model.text_encoder import qwen3_config

    small = text_encoder_config(346)  # the demo's vocabulary: no <|endoftext|>, and no warning
    assert qwen3_config(small).eos_token_id is None and qwen3_config(small).bos_token_id is None
    full = qwen3_config(replace(small, vocab_size=151936))
    assert full.eos_token_id == full.bos_token_id == 151643
