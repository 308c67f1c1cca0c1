"""The training forward equals the inference forward (512-row zero-padded context), LoRA-wrapped or not."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, TOKENIZERS

from anima.train.forward import adapter_context, dit_velocity, encode_captions


@pytest.fixture(scope="module")
def tiny():
    from anima.text.tokenize import AnimaTokenizer
    from anima.weights import loading

    dit, adapter = loading.load_dit(TINY / "weights/anima_tiny_dit.safetensors")
    te = loading.load_text_encoder(TINY / "weights/qwen3_tiny_te.safetensors")
    tok = AnimaTokenizer.from_dirs(TOKENIZERS / "qwen", TOKENIZERS / "t5")
    return dit, adapter, te, tok


def _inputs(seed: int = 0, batch: int = 2, rows: int = 7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, 1, 8, 12, generator=g)
    sigma = torch.rand(batch, generator=g)
    ctx = torch.randn(batch, rows, 128, generator=g)
    return x, sigma, ctx


def test_velocity_equals_padded_inference_forward(tiny) -> None:
    dit = tiny[0]
    x, sigma, ctx = _inputs()
    with torch.no_grad():
        want = dit(x, sigma, F.pad(ctx, (0, 0, 0, 512 - ctx.shape[1])))
        got = dit_velocity(dit, x, sigma, ctx)
    assert (got - want).abs().max() < 1e-5
    # Without the padding the result is different: the test would notice a dropped padding.
    with torch.no_grad():
        unpadded = dit(x, sigma, ctx)
    assert (unpadded - want).abs().max() > 1e-2


def test_velocity_with_lora_wrapped_layers_and_checkpointing(tiny) -> None:
    from anima.lora.network import LoRANetwork

    dit = tiny[0]
    net = LoRANetwork(
        {"dit": dit}, rank=4, targets={"dit": r"blocks\.\d+\.cross_attn\.(k|v)_proj|blocks\.\d+\.mlp\.layer1"}
    )
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)  # a non-zero update, so the wrapped layers matter
    x, sigma, ctx = _inputs(1)
    with net.applied():
        with torch.no_grad():
            want = dit(x, sigma, F.pad(ctx, (0, 0, 0, 512 - ctx.shape[1])))
        grads = []
        for ckpt in (False, True):
            out = dit_velocity(dit, x, sigma, ctx, gradient_checkpointing=ckpt)
            assert (out.detach() - want).abs().max() < 1e-5
            net.zero_grad()
            out.square().mean().backward()
            grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in grads[0])


def test_adapter_context_batches_prompts_of_different_lengths(tiny) -> None:
    adapter = tiny[1]
    g = torch.Generator().manual_seed(3)
    hiddens = [torch.randn(n, 64, generator=g) for n in (5, 3, 5)]
    ids = [torch.randint(0, 1000, (n,), generator=g) for n in (4, 6, 4)]
    out = adapter_context(adapter, hiddens, ids)
    assert out.shape == (3, 6, 128)
    with torch.no_grad():
        for i in range(3):
            alone = adapter(hiddens[i][None], ids[i][None])[0]
            n = ids[i].shape[0]
            assert torch.allclose(out[i, :n], alone, atol=1e-6)
            assert not out[i, n:].any()


def test_encode_captions_matches_the_inference_conditioner(tiny) -> None:
    from anima.text.conditioning import TextConditioner

    dit, adapter, te, tok = tiny
    cond = TextConditioner(tokenizer=tok, text_encoder=te, adapter=adapter, device="cpu", dtype=torch.float32)
    for caption in ("1girl, solo, red hair", ""):
        ((hidden, t5_ids),) = encode_captions(te, tok, [caption])
        ref = cond.encode(caption)
        assert t5_ids.tolist() == ref.t5_ids
        with torch.no_grad():
            ctx = adapter(hidden[None], t5_ids[None])
        assert torch.allclose(ctx[0], ref.context[0, : len(ref.t5_ids)], atol=1e-5)
    # Captions are literal text: parentheses are characters, not prompt weights.
    ((_, ids),) = encode_captions(te, tok, ["hat (red)"])
    assert ids.tolist() == tok.t5_word_ids("hat (red)") + [tok.t5_eos_id]
