"""Issue 5, done-when 1: every LoRA format applied at runtime equals its delta merged by hand.

Each case writes a small LoRA for the tiny fixture model with key names spelled out here (not by
anima's writer), computes the expected weight updates here with plain matrix maths, and compares
real forwards of the DiT, the LLM adapter and the Qwen3 text encoder: runtime-applied LoRA versus
weights edited by hand. Stacking two LoRAs must equal the sum of their scaled deltas.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY

from anima.errors import AnimaError
from anima.lora.apply import AdaptedLinear, apply_loras
from anima.lora.file import lora_from_tensors
from anima.lora.targets import Target
from anima.weights import loading

TOL = 1e-5
Delta = dict[tuple[str, str], torch.Tensor]  # (part, module path) -> ΔW [out, in], fp32, scale included


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    w = TINY / "weights"
    dit, adapter = loading.load_dit(w / "anima_tiny_dit.safetensors", dtype=torch.float32)
    te = loading.load_text_encoder(w / "qwen3_tiny_te.safetensors")
    return {"dit": dit, "adapter": adapter, "te": te}


def _forward(models: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 16, 1, 8, 8, generator=g)
    sigma = torch.tensor([0.8, 0.3])
    ctx = torch.randn(2, 12, 128, generator=g)
    hidden = torch.randn(1, 9, 64, generator=g)
    ids = torch.tensor([[5, 17, 300, 2, 1]])
    with torch.no_grad():
        return {
            "dit": models["dit"](x, sigma, ctx),
            "adapter": models["adapter"](hidden, ids),
            "te": models["te"].encode(torch.tensor([[9, 1000, 42, 77, 3, 151000]])),
        }


def _by_hand(
    models: dict[str, torch.nn.Module], deltas: list[tuple[Delta, float]]
) -> dict[str, torch.Tensor]:
    """Forward with W + Σ s·ΔW (summed in fp32) as the weights, then the weights put back."""
    saved: dict[tuple[str, str], torch.nn.Parameter] = {}
    with torch.no_grad():
        for delta, s in deltas:
            for (part, path), d in delta.items():
                module = models[part].get_submodule(path)
                w0 = saved.setdefault((part, path), module.weight)
                current = module.weight if module.weight is not w0 else w0.float()
                module.weight = torch.nn.Parameter(current + s * d, requires_grad=False)
    try:
        return _forward(models)
    finally:
        for (part, path), w0 in saved.items():
            models[part].get_submodule(path).weight = w0


def _rand(g: torch.Generator, *shape: int, std: float = 0.2, dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(*shape, generator=g) * std).to(dtype)


# ------------------------------------------------------------------ LoRAs written by hand, per format
# (part, official path, module name in the file); shapes come from the fixture (spec 1.2, README).
SHAPES = {
    ("dit", "blocks.0.self_attn.q_proj"): (256, 256),
    ("dit", "blocks.1.cross_attn.k_proj"): (256, 128),
    ("dit", "blocks.0.mlp.layer2"): (256, 1024),
    ("dit", "blocks.1.mlp.layer1"): (1024, 256),
    ("dit", "blocks.0.adaln_modulation_mlp.1"): (32, 256),
    ("dit", "blocks.1.adaln_modulation_self_attn.2"): (768, 32),
    ("dit", "t_embedder.1.linear_1"): (256, 256),
    ("dit", "x_embedder.proj.1"): (256, 68),
    ("dit", "final_layer.linear"): (64, 256),
    ("dit", "final_layer.adaln_modulation.2"): (512, 32),
    ("dit", "blocks.0.cross_attn.output_proj"): (256, 256),
    ("adapter", "blocks.0.cross_attn.v_proj"): (128, 64),
    ("adapter", "blocks.1.self_attn.o_proj"): (128, 128),
    ("adapter", "blocks.0.mlp.0"): (512, 128),
    ("adapter", "out_proj"): (128, 128),
    ("te", "layers.0.self_attn.q_proj"): (128, 64),
    ("te", "layers.1.mlp.down_proj"): (64, 192),
    ("te", "layers.0.mlp.up_proj"): (192, 64),
}

SD_SCRIPTS = {
    ("dit", "blocks.0.self_attn.q_proj"): "lora_unet_blocks_0_self_attn_q_proj",
    ("dit", "blocks.1.cross_attn.k_proj"): "lora_unet_blocks_1_cross_attn_k_proj",
    ("dit", "blocks.0.mlp.layer2"): "lora_unet_blocks_0_mlp_layer2",
    ("adapter", "blocks.0.cross_attn.v_proj"): "lora_unet_llm_adapter_blocks_0_cross_attn_v_proj",
    ("adapter", "out_proj"): "lora_unet_llm_adapter_out_proj",
    ("te", "layers.0.self_attn.q_proj"): "lora_te_layers_0_self_attn_q_proj",
    ("te", "layers.1.mlp.down_proj"): "lora_te_layers_1_mlp_down_proj",
}
COMFY = {
    ("dit", "blocks.1.mlp.layer1"): "diffusion_model.blocks.1.mlp.layer1",
    ("dit", "blocks.0.cross_attn.output_proj"): "diffusion_model.blocks.0.cross_attn.output_proj",
    ("adapter", "blocks.1.self_attn.o_proj"): "diffusion_model.llm_adapter.blocks.1.self_attn.o_proj",
    ("te", "layers.0.mlp.up_proj"): "text_encoders.qwen3_06b.transformer.model.layers.0.mlp.up_proj",
}
DIFFUSION_PIPE = {  # every Linear of a block, adapter included (spec 8)
    ("dit", "blocks.0.self_attn.q_proj"): "diffusion_model.blocks.0.self_attn.q_proj",
    ("dit", "blocks.0.adaln_modulation_mlp.1"): "diffusion_model.blocks.0.adaln_modulation_mlp.1",
    ("dit", "blocks.1.adaln_modulation_self_attn.2"): "diffusion_model.blocks.1.adaln_modulation_self_attn.2",
    ("dit", "t_embedder.1.linear_1"): "diffusion_model.t_embedder.1.linear_1",
    ("dit", "x_embedder.proj.1"): "diffusion_model.x_embedder.proj.1",
    ("dit", "final_layer.linear"): "diffusion_model.final_layer.linear",
    ("dit", "final_layer.adaln_modulation.2"): "diffusion_model.final_layer.adaln_modulation.2",
    ("adapter", "blocks.0.mlp.0"): "diffusion_model.llm_adapter.blocks.0.mlp.0",
}
DIFFUSERS = {  # names as diffusers' CosmosTransformer3DModel / AnimaTextConditioner spell them
    ("dit", "blocks.0.self_attn.q_proj"): "transformer.transformer_blocks.0.attn1.to_q",
    ("dit", "blocks.1.mlp.layer1"): "transformer.transformer_blocks.1.ff.net.0.proj",
    ("dit", "blocks.0.cross_attn.output_proj"): "transformer.transformer_blocks.0.attn2.to_out.0",
    ("dit", "blocks.1.adaln_modulation_self_attn.2"): "transformer.transformer_blocks.1.norm1.linear_2",
    ("dit", "final_layer.adaln_modulation.2"): "transformer.norm_out.linear_2",
    ("adapter", "blocks.1.self_attn.o_proj"): "text_conditioner.blocks.1.self_attn.o_proj",
    ("te", "layers.0.mlp.up_proj"): "text_encoder.layers.0.mlp.up_proj",
}


def lora_file(names: dict, seed: int, *, style: str, alpha: float | None, dtype=torch.bfloat16):
    """LoRA tensors for `names` in `style` ("kohya": lora_down/up, "peft": lora_A/B) + hand deltas."""
    g = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for i, (key, module) in enumerate(names.items()):
        out_f, in_f = SHAPES[key]
        rank = 2 + i % 3
        down, up = _rand(g, rank, in_f, dtype=dtype), _rand(g, out_f, rank, dtype=dtype)
        a, b = ("lora_down", "lora_up") if style == "kohya" else ("lora_A", "lora_B")
        tensors[f"{module}.{a}.weight"], tensors[f"{module}.{b}.weight"] = down, up
        scale = 1.0
        if alpha is not None:
            tensors[f"{module}.alpha"] = torch.tensor(alpha * rank / 4)
            scale = (alpha * rank / 4) / rank
        deltas[key] = up.float() @ down.float() * scale
    return tensors, deltas


def lokr_file(seed: int, prefix: dict, variant: str):
    """LyCORIS LoKr on two DiT layers and one text-encoder layer (Kronecker blocks chosen to fit)."""
    g = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    layout = {  # key: (a, c, b, d) with out = a*b, in = c*d
        ("dit", "blocks.0.self_attn.q_proj"): (4, 8, 64, 32),
        ("dit", "blocks.1.cross_attn.k_proj"): (8, 4, 32, 32),
        ("te", "layers.0.self_attn.q_proj"): (8, 8, 16, 8),
    }
    for key, (a, c, b, d) in layout.items():
        m, r, alpha = prefix[key], 4, 2.0
        if variant == "w1_full":
            w1, w2a, w2b = _rand(g, a, c), _rand(g, b, r), _rand(g, r, d)
            tensors |= {f"{m}.lokr_w1": w1, f"{m}.lokr_w2_a": w2a, f"{m}.lokr_w2_b": w2b}
            w1m, w2m, scale = w1, w2a @ w2b, alpha / r
        elif variant == "both_factored":
            w1a, w1b, w2a, w2b = _rand(g, a, r), _rand(g, r, c), _rand(g, b, r), _rand(g, r, d)
            tensors |= {
                f"{m}.lokr_w1_a": w1a,
                f"{m}.lokr_w1_b": w1b,
                f"{m}.lokr_w2_a": w2a,
                f"{m}.lokr_w2_b": w2b,
            }
            w1m, w2m, scale = w1a @ w1b, w2a @ w2b, alpha / r
        elif variant == "both_full":  # LyCORIS: scale 1 whatever alpha says
            w1, w2 = _rand(g, a, c), _rand(g, b, d, std=0.05)
            tensors |= {f"{m}.lokr_w1": w1, f"{m}.lokr_w2": w2}
            w1m, w2m, scale = w1, w2, 1.0
        else:  # tucker: core t2 [r, r], w2_a [r, b], w2_b [r, d]
            w1, t2, w2a, w2b = _rand(g, a, c), _rand(g, r, r), _rand(g, r, b), _rand(g, r, d)
            tensors |= {f"{m}.lokr_w1": w1, f"{m}.lokr_t2": t2, f"{m}.lokr_w2_a": w2a, f"{m}.lokr_w2_b": w2b}
            w1m, w2m, scale = w1, w2a.T @ t2 @ w2b, alpha / r
        tensors[f"{m}.alpha"] = torch.tensor(alpha)
        deltas[key] = torch.kron(w1m, w2m) * scale
    return tensors, deltas


def loha_file(seed: int, prefix: dict):
    g = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for key in (("dit", "blocks.1.mlp.layer1"), ("adapter", "blocks.1.self_attn.o_proj")):
        (out_f, in_f), m, r, alpha = SHAPES[key], prefix[key], 3, 6.0
        w1a, w1b, w2a, w2b = (
            _rand(g, out_f, r),
            _rand(g, r, in_f),
            _rand(g, out_f, r, std=1),
            _rand(g, r, in_f),
        )
        tensors |= {
            f"{m}.hada_w1_a": w1a,
            f"{m}.hada_w1_b": w1b,
            f"{m}.hada_w2_a": w2a,
            f"{m}.hada_w2_b": w2b,
        }
        tensors[f"{m}.alpha"] = torch.tensor(alpha)
        deltas[key] = (w1a @ w1b) * (w2a @ w2b) * (alpha / r)
    return tensors, deltas


SD_LOKR = {k: "lora_unet_" + k[1].replace(".", "_") for k in SHAPES if k[0] == "dit"} | {
    ("te", "layers.0.self_attn.q_proj"): "lora_te_layers_0_self_attn_q_proj"
}
COMFY_LOKR = {k: "diffusion_model." + k[1] for k in SHAPES if k[0] == "dit"} | {
    (
        "te",
        "layers.0.self_attn.q_proj",
    ): "text_encoders.qwen3_06b.transformer.model.layers.0.self_attn.q_proj",
    ("adapter", "blocks.1.self_attn.o_proj"): "diffusion_model.llm_adapter.blocks.1.self_attn.o_proj",
}


def make(case: str, seed: int):
    """(tensors, metadata, deltas, expected format name) of one test LoRA."""
    if case == "sd-scripts":
        return *lora_file(SD_SCRIPTS, seed, style="kohya", alpha=2.0), {}, "sd-scripts"
    if case == "comfy":
        return *lora_file(COMFY, seed, style="peft", alpha=8.0, dtype=torch.float32), {}, "comfy"
    if case == "diffusion-pipe":
        return *lora_file(DIFFUSION_PIPE, seed, style="peft", alpha=None), {"format": "pt"}, "diffusion-pipe"
    if case == "diffusers":  # alpha from PEFT metadata for the transformer, none for the rest
        tensors, deltas = lora_file(DIFFUSERS, seed, style="peft", alpha=None)
        meta = {"lora_adapter_metadata": json.dumps({"transformer.lora_alpha": 6, "transformer.r": 3})}
        for key in deltas:
            if key[0] == "dit":
                rank = tensors[f"{DIFFUSERS[key]}.lora_A.weight"].shape[0]
                deltas[key] = deltas[key] * 6 / rank
        return tensors, deltas, meta, "diffusers"
    if case.startswith("lokr-"):
        variant = case.removeprefix("lokr-")
        prefix = COMFY_LOKR if variant == "both_factored" else SD_LOKR
        return *lokr_file(seed, prefix, variant), {}, "comfy" if prefix is COMFY_LOKR else "sd-scripts"
    if case.startswith("loha-"):
        sd_adapter = {
            ("adapter", "blocks.1.self_attn.o_proj"): "lora_unet_llm_adapter_blocks_1_self_attn_o_proj"
        }
        prefix = COMFY_LOKR if case == "loha-comfy" else SD_LOKR | sd_adapter
        return *loha_file(seed, prefix), {}, "comfy" if case == "loha-comfy" else "sd-scripts"
    raise ValueError(case)


CASES = [
    "sd-scripts", "comfy", "diffusion-pipe", "diffusers",
    "lokr-w1_full", "lokr-both_factored", "lokr-both_full", "lokr-tucker", "loha-comfy", "loha-sd-scripts",
]  # fmt: skip


def _max_err(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: (a[k] - b[k]).abs().max().item() / max(1.0, b[k].abs().max().item()) for k in a}


@pytest.mark.parametrize("case", CASES)
def test_runtime_apply_equals_hand_merge(models, case: str) -> None:
    tensors, deltas, meta, fmt = make(case, seed=1)
    lora = lora_from_tensors(tensors, meta, case)
    assert lora.fmt == fmt
    assert set(lora.adapters) == {Target(*k) for k in deltas}
    base = _forward(models)
    expected = _by_hand(models, [(deltas, 0.8)])
    with apply_loras(models, [(lora, 0.8)]) as applied:
        assert applied.layers == len(deltas)
        got = _forward(models)
    parts = {p for p, _ in deltas}
    for part in parts:  # the LoRA visibly changes every part it touches (so the test can fail)
        assert (expected[part] - base[part]).abs().max() > 1e-3, part
    err = _max_err(got, expected)
    assert max(err.values()) < TOL, err
    assert all(torch.equal(a, b) for a, b in zip(_forward(models).values(), base.values(), strict=True))


@pytest.mark.parametrize(
    "case", ["sd-scripts", "comfy", "diffusion-pipe", "diffusers", "lokr-w1_full", "loha-comfy"]
)
def test_stacking_is_additive(models, case: str) -> None:
    t1, d1, m1, _ = make(case, seed=2)
    t2, d2, m2, _ = make("comfy" if case != "comfy" else "sd-scripts", seed=3)
    a, b = lora_from_tensors(t1, m1, "a"), lora_from_tensors(t2, m2, "b")
    expected = _by_hand(models, [(d1, 0.7), (d2, -0.45)])
    with apply_loras(models, [(a, 0.7), (b, -0.45)]):
        got = _forward(models)
    err = _max_err(got, expected)
    assert max(err.values()) < TOL, err
    # Nested application (one LoRA applied on top of another) stacks the same way.
    with apply_loras(models, [(a, 0.7)]), apply_loras(models, [(b, -0.45)]):
        nested = _forward(models)
    assert max(_max_err(nested, expected).values()) < TOL


@pytest.mark.parametrize("case", ["sd-scripts", "diffusion-pipe", "lokr-both_factored", "loha-sd-scripts"])
def test_merge_equals_hand_merge_and_unmerge_is_exact(models, case: str) -> None:
    tensors, deltas, meta, _ = make(case, seed=4)
    lora = lora_from_tensors(tensors, meta, case)
    before = {p: {k: v.clone() for k, v in m.state_dict().items()} for p, m in models.items()}
    params = {p: dict(m.named_parameters()) for p, m in models.items()}
    expected = _by_hand(models, [(deltas, 1.3)])
    with apply_loras(models, [(lora, 1.3)], merge=True):
        got = _forward(models)
        q = models["dit"].get_submodule("blocks.1.mlp.layer1")
        assert type(q) is torch.nn.Linear  # merged: no wrapper left in the model
    assert max(_max_err(got, expected).values()) < TOL
    for p, m in models.items():  # bit for bit, and the very same parameter objects
        after = m.state_dict()
        assert all(torch.equal(before[p][k], after[k]) for k in before[p])
        assert all(params[p][k] is v for k, v in m.named_parameters())


def test_runtime_apply_leaves_base_weights_alone(models) -> None:
    tensors, _, meta, _ = make("sd-scripts", seed=5)
    lora = lora_from_tensors(tensors, meta, "x")
    dit = models["dit"]
    q = dit.blocks[0].self_attn.q_proj
    w, ptr, keys = q.weight, q.weight.data_ptr(), list(dit.state_dict())
    w0 = w.detach().clone()
    with apply_loras(models, [(lora, 1.0)]):
        wrapped = dit.blocks[0].self_attn.q_proj
        assert isinstance(wrapped, AdaptedLinear) and wrapped.weight is w
        assert list(dit.state_dict()) == keys  # same names while applied
        _forward(models)
        assert torch.equal(w, w0) and w.data_ptr() == ptr
    assert dit.blocks[0].self_attn.q_proj is q


def test_foreign_and_misfit_loras_are_refused(models, caplog) -> None:
    sdxl = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320)}
    with pytest.raises(AnimaError, match="Stable Diffusion"):
        lora_from_tensors(sdxl, {}, "sdxl")
    flux = {"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(4, 3072)}
    with pytest.raises(AnimaError, match="Flux"):
        lora_from_tensors(flux, {}, "flux")
    # A full-size Anima LoRA on the tiny model: the keys are Anima's, the shapes are not.
    big = {
        "lora_unet_blocks_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 2048),
        "lora_unet_blocks_0_self_attn_q_proj.lora_up.weight": torch.zeros(2048, 4),
    }
    with pytest.raises(AnimaError, match="fits no layer"):
        apply_loras(models, [(lora_from_tensors(big, {}, "big"), 1.0)])
    # Some keys unknown: applied anyway, with a warning that counts and lists them.
    tensors, _, _, _ = make("sd-scripts", seed=6)
    tensors["lora_unet_blocks_0_bogus_layer.lora_down.weight"] = torch.zeros(2, 2)
    tensors["lora_unet_blocks_7_self_attn_q_proj.lora_down.weight"] = torch.zeros(2, 256)
    tensors["lora_unet_blocks_7_self_attn_q_proj.lora_up.weight"] = torch.zeros(256, 2)
    with caplog.at_level("WARNING"):
        lora = lora_from_tensors(tensors, {}, "partial")
        with apply_loras(models, [(lora, 1.0)]) as applied:
            assert applied.layers == len(SD_SCRIPTS)
    text = caplog.text
    assert (
        f"1 of {len(tensors)} keys match no Anima layer" in text and "lora_unet_blocks_0_bogus_layer" in text
    )
    assert "1 layers do not fit this model" in text and "dit:blocks.7.self_attn.q_proj" in text


def test_dit_fast_paths_see_loras(models) -> None:
    """Fused q/k/v and the cross-attention K/V cache must not bypass runtime or merged LoRAs."""
    from anima.model.dit import fuse_qkv

    dit = models["dit"]
    assert all(fuse_qkv(b.self_attn) for b in dit.blocks)
    tensors, deltas, meta, _ = make("sd-scripts", seed=8)  # q_proj of block 0, k_proj of block 1, ...
    lora = lora_from_tensors(tensors, meta, "x")
    g = torch.Generator().manual_seed(9)
    x, sigma, ctx = (
        torch.randn(1, 16, 1, 8, 8, generator=g),
        torch.tensor([0.6]),
        torch.randn(1, 12, 128, generator=g),
    )

    def run() -> torch.Tensor:
        with torch.no_grad():
            return dit(x, sigma, ctx, context_cache=dit.prepare_context(ctx))

    saved = {k: models[k[0]].get_submodule(k[1]).weight.detach().clone() for k in deltas}
    with torch.no_grad():
        for (part, path), d in deltas.items():
            models[part].get_submodule(path).weight.add_(d)
    expected = run()
    with torch.no_grad():
        for (part, path), w0 in saved.items():
            models[part].get_submodule(path).weight.copy_(w0)
    base = run()
    assert (expected - base).abs().max() > 1e-3
    for merge in (False, True):
        with apply_loras(models, [(lora, 1.0)], merge=merge):
            got = run()
        assert (got - expected).abs().max() < TOL, merge
    assert dit.blocks[0].self_attn._fused_qkv_weight() is not None  # fused again after removal
    assert torch.equal(run(), base)
