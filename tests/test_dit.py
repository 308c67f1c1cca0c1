"""MiniTrainDIT against the ComfyUI component fixtures, plus layout, RoPE, meta-build and fp16 checks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import TINY, load_st

from anima.model.config import DiTConfig
from anima.model.dit import MiniTrainDIT, TimeCond
from anima.model.rope import (
    Rope3D,
    apply_rope_rotate_half,
    apply_rope_split_half,
    rope3d,
    rope3d_angles,
    rope3d_axis_dims,
    rope3d_thetas,
    rope_1d,
)

ATOL = 1e-4
RTOL = 1e-4
# DiT case -> adapter prompt whose 512-row context it used (fixture README).
CASES = {"c0": "p1", "c1": "p0"}


def tiny_dit_state() -> dict[str, torch.Tensor]:
    """Tiny DiT weights: `net.` stripped, adapter keys dropped, upcast to fp32."""
    sd = load_st(TINY / "weights" / "anima_tiny_dit.safetensors")
    return {k.removeprefix("net."): v.float() for k, v in sd.items() if not k.startswith("net.llm_adapter.")}


def build(sd: dict[str, torch.Tensor]) -> MiniTrainDIT:
    cfg = DiTConfig.from_shapes({k: tuple(v.shape) for k, v in sd.items()})
    with torch.device("meta"):
        model = MiniTrainDIT(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return tiny_dit_state()


@pytest.fixture(scope="module")
def model(state) -> MiniTrainDIT:
    return build(state)


@pytest.fixture(scope="module")
def fx() -> dict[str, torch.Tensor]:
    return load_st(TINY / "components" / "dit.safetensors")


@pytest.fixture(scope="module")
def contexts() -> dict[str, torch.Tensor]:
    ad = load_st(TINY / "components" / "adapter.safetensors")
    return {case: ad[f"{p}.context"] for case, p in CASES.items()}


def assert_close(name: str, got: torch.Tensor, ref: torch.Tensor) -> None:
    assert got.shape == ref.shape, (name, got.shape, ref.shape)
    err = (got.float() - ref).abs().max().item()
    rel = err / max(ref.abs().max().item(), 1e-12)
    print(f"{name}: max abs {err:.3e}, rel {rel:.3e}")
    assert err <= ATOL and rel <= RTOL, f"{name}: max abs {err:.3e}, rel {rel:.3e}"


# -- fixture agreement --------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
@torch.no_grad()
def test_matches_comfyui_intermediates(model, fx, contexts, case):
    x, sigma, context = fx[f"{case}.x"], fx[f"{case}.sigma"], contexts[case]

    tokens = model.embed(x)
    assert_close(f"{case}.x_embedder_out", tokens, fx[f"{case}.x_embedder_out"])

    cond = model.time_embedding(sigma)
    assert_close(f"{case}.t_sinusoid", cond.sinusoid, fx[f"{case}.t_sinusoid"])
    assert_close(f"{case}.t_embedder_adaln_lora", cond.adaln_lora, fx[f"{case}.t_embedder_adaln_lora"])
    assert_close(f"{case}.t_embedding_norm_out", cond.emb, fx[f"{case}.t_embedding_norm_out"])

    grid = tuple(tokens.shape[1:4])
    rope = model.rope(grid, x.device)
    stream = tokens.flatten(1, 3)
    for j, block in enumerate(model.blocks):
        stream = block(stream, cond, context, rope)
        ref = fx[f"{case}.block{j}_out"]
        assert_close(f"{case}.block{j}_out", stream.reshape(ref.shape), ref)

    y = model.final_layer(stream, cond)
    ref = fx[f"{case}.final_layer_out"]
    assert_close(f"{case}.final_layer_out", y.reshape(ref.shape), ref)

    v = model(x, sigma, context)  # the public entry point, end to end
    assert_close(f"{case}.velocity", v, fx[f"{case}.velocity"])
    assert_close(f"{case}.denoised", x - sigma.view(-1, 1, 1, 1, 1) * v, fx[f"{case}.denoised"])


# -- layout ---------------------------------------------------------------------------------------


def test_patchify_order_is_c_m_n(model):
    # 17 channels = 16 latent + the padding-mask channel, as the patch embedder sees them.
    x = torch.arange(2 * 17 * 1 * 4 * 6, dtype=torch.float32).reshape(2, 17, 1, 4, 6)
    patches = model.x_embedder.proj[0](x)
    assert patches.shape == (2, 1, 2, 3, 68)
    for c, m, n, i, j in [(0, 0, 0, 0, 0), (5, 1, 0, 1, 2), (16, 1, 1, 0, 1), (3, 0, 1, 1, 0)]:
        assert patches[1, 0, i, j, c * 4 + m * 2 + n] == x[1, c, 0, 2 * i + m, 2 * j + n]


def test_mask_channel_is_zero_and_last(model, state):
    # Columns 64..67 of the patch embedding belong to the zero mask: changing them changes nothing.
    x = torch.randn(1, 16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    tweaked = copy.deepcopy(model)
    with torch.no_grad():
        tweaked.x_embedder.proj[1].weight[:, 64:] += 1.0
        assert torch.equal(tweaked.embed(x), model.embed(x))
        tweaked.x_embedder.proj[1].weight[:, 63] += 1.0
        assert not torch.equal(tweaked.embed(x), model.embed(x))


def test_unpatchify_order_is_p1_p2_c(model):
    c_out = 16
    y = torch.randn(2, 3 * 5, 4 * c_out, generator=torch.Generator().manual_seed(0))
    out = model.unpatchify(y, (1, 3, 5))
    assert out.shape == (2, c_out, 1, 6, 10)
    for c, p1, p2, h, w in [(0, 0, 0, 0, 0), (7, 1, 0, 2, 4), (15, 1, 1, 1, 3), (3, 0, 1, 2, 0)]:
        assert out[1, c, 0, 2 * h + p1, 2 * w + p2] == y[1, h * 5 + w, p1 * 2 * c_out + p2 * c_out + c]


@torch.no_grad()
def test_odd_latent_is_padded_circularly_and_cropped(model, contexts):
    x = torch.randn(1, 16, 1, 7, 9, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.4])
    v = model(x, sigma, contexts["c0"])
    assert v.shape == x.shape
    # Wrap-around padding written out by hand: the first row/column repeated after the last.
    padded = torch.cat([x, x[:, :, :, :1]], dim=3)
    padded = torch.cat([padded, padded[..., :1]], dim=4)
    assert torch.equal(v, model(padded, sigma, contexts["c0"])[:, :, :, :7, :9])


# -- RoPE -----------------------------------------------------------------------------------------


def test_rope3d_pins():
    assert rope3d_axis_dims(128) == (44, 42, 42)
    theta_t, theta_h, theta_w = rope3d_thetas(128, (1.0, 4.0, 4.0))
    assert theta_t == 10000.0
    assert theta_h == theta_w == pytest.approx(10000 * 4 ** (42 / 40), rel=1e-12)
    assert theta_h == pytest.approx(42870.9385, rel=1e-9)

    ang = rope3d_angles((1, 3, 5), 128)
    assert ang.shape == (15, 64) and ang.dtype == torch.float32
    assert torch.count_nonzero(ang[:, :22]) == 0  # T = 1: the temporal pairs are not rotated
    grid = ang.reshape(3, 5, 64)
    j = torch.arange(21, dtype=torch.float64)
    freqs_hw = theta_h ** (-2 * j / 42)
    for h, w in [(0, 0), (2, 1), (1, 4)]:
        torch.testing.assert_close(grid[h, w, 22:43].double(), h * freqs_hw, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grid[h, w, 43:].double(), w * freqs_hw, rtol=1e-6, atol=1e-7)
    # Temporal frequencies use theta 10000 over 44 channels.
    ang_t = rope3d_angles((3, 1, 1), 128)
    freqs_t = 10000.0 ** (-2 * torch.arange(22, dtype=torch.float64) / 44)
    torch.testing.assert_close(ang_t[2, :22].double(), 2 * freqs_t, rtol=1e-6, atol=1e-7)


def test_rope3d_cache_returns_same_tables():
    rope = Rope3D(128)
    a = rope((1, 4, 6), "cpu")
    assert rope((1, 4, 6), "cpu") is a
    torch.testing.assert_close(a, rope3d((1, 4, 6), 128), rtol=0, atol=0)


def test_split_half_rotates_pairs_i_and_i_plus_half():
    cos, sin = rope3d((1, 2, 3), 128)
    x = torch.randn(2, 3, 6, 128, generator=torch.Generator().manual_seed(1))
    got = apply_rope_split_half(x, cos, sin)
    z = torch.complex(x[..., :64].double(), x[..., 64:].double()) * torch.polar(
        torch.ones(6, 64, dtype=torch.float64), torch.atan2(sin, cos).double()
    )
    torch.testing.assert_close(got, torch.cat([z.real, z.imag], dim=-1).float(), rtol=1e-5, atol=1e-5)
    # bf16 input: fp32 math, bf16 result.
    assert apply_rope_split_half(x.bfloat16(), cos, sin).dtype == torch.bfloat16


def test_rope_1d_matches_hf_qwen3():
    from transformers import Qwen3Config
    from transformers.models.qwen3 import modeling_qwen3 as hf

    cfg = Qwen3Config(
        hidden_size=128,
        num_attention_heads=2,
        head_dim=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    pos = torch.arange(7)[None]
    hf_cos, hf_sin = hf.Qwen3RotaryEmbedding(cfg)(torch.zeros(1, 7, 128), pos)
    cos, sin = rope_1d(pos, 64, 10000.0)
    torch.testing.assert_close(cos, hf_cos, rtol=0, atol=0)
    torch.testing.assert_close(sin, hf_sin, rtol=0, atol=0)
    q = torch.randn(1, 2, 7, 64, generator=torch.Generator().manual_seed(2))
    ref_q, _ = hf.apply_rotary_pos_emb(q, q, hf_cos, hf_sin)
    torch.testing.assert_close(apply_rope_rotate_half(q, cos, sin), ref_q, rtol=0, atol=0)
    torch.testing.assert_close(apply_rope_rotate_half(q, cos[0], sin[0]), ref_q, rtol=0, atol=0)


# -- full-size build ------------------------------------------------------------------------------


def test_full_config_on_meta_device():
    with torch.device("meta"):
        model = MiniTrainDIT(DiTConfig())
    sd = model.state_dict()
    assert len(sd) == 567
    assert sum(p.numel() for p in model.parameters()) == 1_956_405_248
    block = [k for k in sd if k.startswith("blocks.0.")]
    assert len(block) == 20
    assert sum(sd[k].numel() for k in block) == 69_206_528
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["x_embedder.proj.1.weight"] == (2048, 68)
    assert shapes["t_embedder.1.linear_2.weight"] == (6144, 2048)
    assert shapes["t_embedding_norm.weight"] == (2048,)
    assert shapes["blocks.27.cross_attn.k_proj.weight"] == (2048, 1024)
    assert shapes["blocks.27.self_attn.q_norm.weight"] == (128,)
    assert shapes["blocks.27.mlp.layer1.weight"] == (8192, 2048)
    assert shapes["blocks.27.adaln_modulation_mlp.2.weight"] == (6144, 256)
    assert shapes["final_layer.adaln_modulation.2.weight"] == (4096, 256)
    assert shapes["final_layer.linear.weight"] == (64, 2048)
    # The config read back from these shapes is the one we built from.
    assert DiTConfig.from_shapes(shapes) == DiTConfig()


# -- fp16 -----------------------------------------------------------------------------------------


@torch.no_grad()
def test_fp16_keeps_residual_in_fp32(state, fx, contexts):
    """Blow up block 0's MLP gate so the residual stream leaves the fp16 range (as the real model's does)."""
    d = state["t_embedding_norm.weight"].shape[0]
    sd = dict(state)
    w = sd["blocks.0.adaln_modulation_mlp.2.weight"].clone()
    w[2 * d :] *= 1e5  # rows of the gate chunk (shift, scale, gate)
    sd["blocks.0.adaln_modulation_mlp.2.weight"] = w
    m32 = build(sd)
    m16 = copy.deepcopy(m32).half()
    x, sigma, context = fx["c0.x"], fx["c0.sigma"], contexts["c0"]

    # The fp32 residual after block 0 really exceeds fp16's range ...
    tokens = m32.embed(x).flatten(1, 3)
    cond = m32.time_embedding(sigma)
    rope = m32.rope((1, 8, 8), x.device)
    assert m32.blocks[0](tokens, cond, context, rope).abs().max() > 65504

    # ... so a plain fp16 pass (fp16 stream and conditioning through the same block code) overflows,
    half_cond = TimeCond(*(t.half() for t in cond))
    plain = m16.blocks[0](tokens.half(), half_cond, context.half(), rope)
    assert not torch.isfinite(plain).all()

    # while the model's own fp16 path stays finite and close to fp32.
    v32 = m32(x, sigma, context)
    v16 = m16(x, sigma, context)
    assert v16.dtype == x.dtype and torch.isfinite(v16).all()
    rel = ((v16 - v32).abs().max() / v32.abs().max()).item()
    print(f"fp16 vs fp32 velocity: rel {rel:.3e}")
    assert rel < 5e-3
    # The fp16 model computes the conditioning in fp32 (sd-scripts #2302).
    assert m16.time_embedding(sigma).emb.dtype == torch.float32


@torch.no_grad()
def test_bf16_runs_plain(model, fx, contexts):
    mb = copy.deepcopy(model).to(torch.bfloat16)
    x, sigma = fx["c1.x"], fx["c1.sigma"]
    assert mb.time_embedding(sigma).emb.dtype == torch.bfloat16
    v = mb(x, sigma, contexts["c1"])
    assert v.dtype == torch.float32
    ref = fx["c1.velocity"]
    rel = ((v - ref).abs().max() / ref.abs().max()).item()
    assert math.isfinite(rel) and rel < 0.03  # measured ~9e-3


@torch.no_grad()
def test_fp16_adaln_stays_fp32_with_a_lora_on_it(state, fx, contexts):
    """A LoRA on an AdaLN modulation layer must not drop the fp16 model's fp32 conditioning path."""
    from anima.lora.apply import apply_loras
    from anima.lora.file import lora_from_tensors

    d = state["t_embedding_norm.weight"].shape[0]
    w = state["blocks.0.adaln_modulation_mlp.2.weight"]  # [3d, r]
    r = w.shape[1]
    up = torch.zeros_like(w)
    up[2 * d :] = w[2 * d :] * 1e5  # the LoRA, not the base, pushes the gate out of fp16's range
    name = "diffusion_model.blocks.0.adaln_modulation_mlp.2"
    lora = lora_from_tensors(
        {
            f"{name}.lora_A.weight": torch.eye(r),
            f"{name}.lora_B.weight": up,
            f"{name}.alpha": torch.tensor(float(r)),
        }
    )
    m32 = build(state)
    m16 = copy.deepcopy(m32).half()
    x, sigma, context = fx["c0.x"], fx["c0.sigma"], contexts["c0"]
    with apply_loras({"dit": m32}, [(lora, 1.0)]):
        v32 = m32(x, sigma, context)
    with apply_loras({"dit": m16}, [(lora, 1.0)]):
        v16 = m16(x, sigma, context)
    assert (v32 - m32(x, sigma, context)).abs().max() > 1e-2  # the LoRA does change the output
    assert torch.isfinite(v16).all()
    assert ((v16 - v32).abs().max() / v32.abs().max()).item() < 5e-3
