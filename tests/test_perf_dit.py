"""DiT speed paths against the plain path on the tiny fixture: cached cross-attention K/V, fused q/k/v,
attention backends and the opt-in first-block step cache; and that each one steps aside when a layer
is wrapped (LoRA) or replaced, so wrappers always see the plain calls."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY, load_st
from test_dit import CASES, build, tiny_dit_state
from torch import nn

from anima.errors import AnimaError
from anima.model import attention as attn_mod
from anima.model import dit_cache
from anima.model.dit import Attention, fuse_qkv
from anima.model.dit_cache import FirstBlockCache, RunCaches


@pytest.fixture(scope="module")
def model():
    return build(tiny_dit_state())


@pytest.fixture(scope="module")
def inputs():
    fx = load_st(TINY / "components" / "dit.safetensors")
    ad = load_st(TINY / "components" / "adapter.safetensors")
    x = torch.cat([fx["c0.x"], fx["c0.x"].flip(-1)])  # a CFG-like batch of two
    sigma = torch.cat([fx["c0.sigma"], fx["c0.sigma"]])
    context = torch.cat([ad[f"{CASES['c0']}.context"], ad[f"{CASES['c1']}.context"]])
    return x, sigma, context


class AddDelta(nn.Module):
    """A LoRA-like wrapper: base(x) + x @ delta.T (a different result than base alone)."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        g = torch.Generator().manual_seed(7)
        self.delta = nn.Parameter(0.05 * torch.randn(base.out_features, base.in_features, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + nn.functional.linear(x, self.delta.to(x.dtype))


class Passthrough(nn.Module):
    """A NAG-style wrapper around cross_attn that only ever sees (x, context)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple] = []

    def forward(self, x: torch.Tensor, context: torch.Tensor, **kwargs) -> torch.Tensor:
        self.seen.append(tuple(sorted(kwargs)))
        return self.inner(x, context)


# -- cached cross-attention K/V ------------------------------------------------------------------


def assert_same_maths(a: torch.Tensor, b: torch.Tensor) -> None:
    """The cached path shares the zero padding's key (`ContextKV`): the same maths as the plain path's
    512 keys, summed in another order (1.8e-6 of outputs up to 4.6 here)."""
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_context_cache_equals_plain_path(model, inputs):
    x, sigma, context = inputs
    plain = model(x, sigma, context)
    cache = model.prepare_context(context)
    assert len(cache.kv) == len(model.blocks) and all(kv is not None for kv in cache.kv)
    assert_same_maths(model(x, sigma, context, context_cache=cache), plain)
    # Reused on a later step (another sigma and latent), still equal to the plain path.
    x2, s2 = x.flip(-1), sigma * 0.5
    assert_same_maths(model(x2, s2, context, context_cache=cache), model(x2, s2, context))


@torch.no_grad()
def test_context_cache_leaves_blocks_stored_elsewhere_to_their_forward(model, inputs):
    """A block streamed from host memory has its weights on the device only inside its forward, so
    the per-prompt K/V must not touch them before (on a GPU this was a device-mismatch crash). The
    meta device stands in for "not where the context is"."""
    x, sigma, context = inputs
    m = copy.deepcopy(model)
    m.blocks[1].to("meta")
    cache = m.prepare_context(context)
    assert cache.kv[0] is not None and cache.kv[1] is None
    m.blocks[1].load_state_dict(model.blocks[1].state_dict(), assign=True)  # "streamed in"
    assert_same_maths(m(x, sigma, context, context_cache=cache), model(x, sigma, context))


def test_run_caches_find_a_context_again_without_reading_it(model, inputs, monkeypatch):
    """The same tensor object again is a hit by identity: no fingerprint, which on a GPU would read the
    context back to the host every step. Equal content in a new tensor is still a hit by content."""
    _x, _sigma, context = inputs
    run = RunCaches(model)
    first = run.context_cache(context)
    reads = []
    fingerprint = dit_cache._fingerprint
    monkeypatch.setattr(dit_cache, "_fingerprint", lambda c: reads.append(1) or fingerprint(c))
    assert run.context_cache(context) is first and reads == []
    assert run.context_cache(context.clone()) is first and len(reads) == 1
    other = run.context_cache(context.flip(0))
    assert other is not first and not torch.equal(other.context, first.context)


@torch.no_grad()
def test_context_cache_refuses_another_context(model, inputs):
    x, sigma, context = inputs
    cache = model.prepare_context(context)
    with pytest.raises(ValueError, match="different context"):
        model(x, sigma, context.flip(0), context_cache=cache)
    with pytest.raises(ValueError, match="different context"):
        model(x[:1], sigma[:1], context[:1], context_cache=cache)


@torch.no_grad()
def test_context_cache_uses_wrapped_kv_projections(model, inputs):
    """A LoRA wrapper on k_proj applied before prepare_context is part of the cached keys."""
    x, sigma, context = inputs
    m = copy.deepcopy(model)
    m.blocks[1].cross_attn.k_proj = AddDelta(m.blocks[1].cross_attn.k_proj)
    plain = m(x, sigma, context)
    assert (plain - model(x, sigma, context)).abs().max() > 1e-2  # the wrapper matters
    assert_same_maths(m(x, sigma, context, context_cache=m.prepare_context(context)), plain)


@torch.no_grad()
def test_wrapped_cross_attn_gets_plain_call(model, inputs):
    x, sigma, context = inputs
    m = copy.deepcopy(model)
    wrapper = Passthrough(m.blocks[0].cross_attn)
    m.blocks[0].cross_attn = wrapper
    cache = m.prepare_context(context)
    assert cache.kv[0] is None and cache.kv[1] is not None
    out = m(x, sigma, context, context_cache=cache)
    assert wrapper.seen == [()]  # called once, with (x, context) only
    assert_same_maths(out, model(x, sigma, context))


# -- fused q/k/v -----------------------------------------------------------------------------------


@torch.no_grad()
def test_fused_qkv_matches_and_keeps_the_state_dict(model, inputs):
    x, sigma, context = inputs
    m = copy.deepcopy(model)
    before = m.state_dict()
    assert all(fuse_qkv(b.self_attn) for b in m.blocks)
    assert m.blocks[0].self_attn._fused_qkv_weight() is not None
    after = m.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    torch.testing.assert_close(m(x, sigma, context), model(x, sigma, context), rtol=1e-5, atol=1e-5)
    # Strict loading still works, and an in-place weight edit (a merged LoRA) reaches the fused path.
    m.load_state_dict(before, strict=True)
    assert m.blocks[0].self_attn._fused_qkv_weight() is not None
    m.blocks[0].self_attn.k_proj.weight.mul_(1.5)
    ref = copy.deepcopy(model)
    ref.blocks[0].self_attn.k_proj.weight.mul_(1.5)
    torch.testing.assert_close(m(x, sigma, context), ref(x, sigma, context), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_fused_qkv_steps_aside_for_wrapped_or_reassigned_weights(model, inputs):
    x, sigma, context = inputs
    m = copy.deepcopy(model)
    for b in m.blocks:
        fuse_qkv(b.self_attn)
    m.blocks[0].self_attn.v_proj = AddDelta(m.blocks[0].self_attn.v_proj)
    assert m.blocks[0].self_attn._fused_qkv_weight() is None
    ref = copy.deepcopy(model)
    ref.blocks[0].self_attn.v_proj = AddDelta(ref.blocks[0].self_attn.v_proj)
    torch.testing.assert_close(m(x, sigma, context), ref(x, sigma, context), rtol=1e-5, atol=1e-5)
    # load_state_dict(assign=True) replaces the views: back to three matmuls, same numbers.
    m2 = copy.deepcopy(model)
    fuse_qkv(m2.blocks[1].self_attn)
    m2.load_state_dict(model.state_dict(), strict=True, assign=True)
    assert m2.blocks[1].self_attn._fused_qkv_weight() is None
    assert torch.equal(m2(x, sigma, context), model(x, sigma, context))


# -- attention backends ----------------------------------------------------------------------------


@torch.no_grad()
def test_attention_backends(model, inputs):
    x, sigma, context = inputs
    m = copy.deepcopy(model)
    assert attn_mod.set_backend(m.modules(), "math") == "math"
    assert all(a.attention_backend == "math" for a in m.modules() if isinstance(a, Attention))
    torch.testing.assert_close(m(x, sigma, context), model(x, sigma, context), rtol=1e-4, atol=1e-4)
    assert attn_mod.resolve_backend("auto") == "sdpa"
    with pytest.raises(AnimaError, match="unknown attention backend"):
        attn_mod.resolve_backend("flash3")
    for name in ("sage", "xformers"):
        if name not in attn_mod.available_backends():
            with pytest.raises(AnimaError, match="pip install"):
                attn_mod.resolve_backend(name)


# -- first-block step cache ------------------------------------------------------------------------


@torch.no_grad()
def test_step_cache_threshold_zero_is_exact(model, inputs):
    x, sigma, context = inputs
    cache = FirstBlockCache(threshold=0.0)
    for s in (1.0, 0.8, 0.6):
        sig = sigma * 0 + s
        assert torch.equal(model(x, sig, context, step_cache=cache), model(x, sig, context))
    assert cache.calls == 3 and cache.skipped == 0


@torch.no_grad()
def test_step_cache_skips_and_reuses_the_rest_residual(model, inputs):
    x, sigma, context = inputs
    cache = FirstBlockCache(threshold=float("inf"), max_skips=1, warmup=1)
    first = model(x, sigma, context, step_cache=cache)
    # Identical input: block 0's residual is unchanged, the rest is skipped, the result identical.
    again = model(x, sigma, context, step_cache=cache)
    assert cache.skipped == 1
    # Equal up to the rounding of re-adding the cached residual (h0 + (h - h0) vs h): a few ulps of
    # the residual stream, whose last digit depends on the CPU's vector kernels (1.07e-6 seen with
    # torch's scalar fallback), hence the relative part.
    torch.testing.assert_close(again, first, rtol=1e-6, atol=1e-6)
    # max_skips=1: the next call runs in full (and equals the plain path).
    x2 = x * 0.9
    assert torch.equal(model(x2, sigma, context, step_cache=cache), model(x2, sigma, context))
    assert (cache.calls, cache.skipped) == (3, 1)
    # A different context (the uncond pass of CFG) keeps its own history: its first call never skips.
    model(x, sigma, context.flip(0).contiguous(), step_cache=cache)
    assert (cache.calls, cache.skipped) == (4, 1)
