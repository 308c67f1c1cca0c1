"""Issue 5, done-when 5: a saved LoRA loads back through every format after `anima lora convert`.

Sources are made by the trainer-facing API (`LoRANetwork`, LoRA and LoKr) and a LoHa file; each is
converted by the CLI into every format, then from there into every other format, and each result
must load back with the same targets and the same weight updates.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY

from anima.cli import main
from anima.errors import AnimaError
from anima.lora.apply import apply_loras
from anima.lora.file import load_lora, save_lora
from anima.lora.info import convert
from anima.lora.keys import FORMATS
from anima.lora.modules import LoHa, LoKr, LoRA
from anima.lora.network import LoRANetwork
from anima.lora.targets import Target
from anima.weights import loading


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    w = TINY / "weights"
    dit, adapter = loading.load_dit(w / "anima_tiny_dit.safetensors", dtype=torch.float32)
    te = loading.load_text_encoder(w / "qwen3_tiny_te.safetensors")
    return {"dit": dit, "adapter": adapter, "te": te}


def _randomise(net: LoRANetwork, seed: int) -> None:
    """Trained-looking factors (a fresh network is an exact zero update)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _network(models, kind: str) -> LoRANetwork:
    # A spread of layer kinds in all three parts (few, to keep the format matrix fast).
    targets = {
        "dit": r"blocks\.0\.(self_attn\.q_proj|cross_attn\.v_proj|mlp\.layer1|adaln_modulation_mlp\.2)"
        r"|t_embedder\.1\.linear_1|x_embedder\.proj\.1|final_layer\.linear",
        "adapter": r"blocks\.1\.cross_attn\.k_proj|out_proj",
        "te": r"layers\.0\.self_attn\.q_proj|layers\.1\.mlp\.down_proj",
    }
    net = LoRANetwork(
        models, rank=4, alpha=3.0, kind=kind, targets=targets, generator=torch.Generator().manual_seed(0)
    )
    _randomise(net, 1)
    return net


@pytest.fixture(scope="module")
def sources(models, tmp_path_factory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("src")
    lora = _network(models, "lora").save(d / "net_lora.safetensors", "comfy", {"ss_output_name": "x"})
    lokr = _network(models, "lokr").save(d / "net_lokr.safetensors", "sd-scripts", dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    loha = {
        Target("dit", "blocks.0.mlp.layer1"): LoHa(
            w1_a=torch.randn(1024, 2, generator=g), w1_b=torch.randn(2, 256, generator=g),
            w2_a=torch.randn(1024, 2, generator=g), w2_b=torch.randn(2, 256, generator=g), alpha=1.0,
        ),
        Target("te", "layers.1.self_attn.v_proj"): LoHa(
            w1_a=torch.randn(64, 3, generator=g), w1_b=torch.randn(3, 64, generator=g),
            w2_a=torch.randn(64, 3, generator=g), w2_b=torch.randn(3, 64, generator=g), alpha=None,
        ),
    }  # fmt: skip
    loha_path = save_lora(loha, d / "loha.safetensors", "comfy")
    return {"lora": lora, "lokr": lokr, "loha": loha_path}


def _same(a, b, bitwise: bool, want: dict | None = None) -> None:
    """Same targets and kinds, same weight updates; `bitwise`: the very same factor tensors."""
    assert set(a.adapters) == set(b.adapters)
    for t, x in a.adapters.items():
        y = b.adapters[t]
        assert x.kind == y.kind
        dx = want[t] if want is not None else x.delta_weight()
        assert (dx - y.delta_weight()).abs().max() <= 1e-6 * max(1.0, dx.abs().max().item()), t
        if bitwise:
            tx, ty = x.tensors(), y.tensors()
            assert tx.keys() == ty.keys() and all(torch.equal(tx[k], ty[k]) for k in tx), t
            assert x.scale == y.scale


@pytest.mark.parametrize("source", ["lora", "lokr", "loha"])
def test_round_trips_through_every_format(sources, tmp_path, source: str) -> None:
    src = sources[source]
    original = load_lora(src)
    assert original.adapters and all(a.kind == source for a in original.adapters.values())
    want = {t: a.delta_weight() for t, a in original.adapters.items()}
    for first in FORMATS:
        hop1 = tmp_path / f"{first}.safetensors"
        assert main(["lora", "convert", str(src), str(hop1), "--to", first]) == 0
        loaded = load_lora(hop1)
        if source == "lora":
            assert loaded.fmt == first
        # Renaming keeps tensors bit for bit; formats without alpha fold the scale into lora_B.
        folds = {first} & {"diffusers", "diffusion-pipe"} and source == "lora"
        _same(original, loaded, not folds, want)
        for second in FORMATS:
            hop2 = tmp_path / f"{first}-{second}.safetensors"
            convert(hop1, hop2, second)
            _same(
                original,
                load_lora(hop2),
                bitwise=not folds and not ({second} & {"diffusers", "diffusion-pipe"} and source == "lora"),
            )
    assert load_lora(tmp_path / "comfy.safetensors").metadata.get("ss_output_name", "x") == "x"


def test_converted_lora_applies_like_the_network(models, tmp_path) -> None:
    net = _network(models, "lora")
    path = net.save(tmp_path / "n.safetensors", "sd-scripts", dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    x, sigma, ctx = (
        torch.randn(1, 16, 1, 8, 8, generator=g),
        torch.tensor([0.5]),
        torch.randn(1, 8, 128, generator=g),
    )
    with torch.no_grad(), net.applied():
        want = models["dit"](x, sigma, ctx)
    for fmt in FORMATS:
        out = tmp_path / f"n-{fmt}.safetensors"
        convert(path, out, fmt)
        with torch.no_grad(), apply_loras(models, [(load_lora(out), 1.0)]):
            got = models["dit"](x, sigma, ctx)
        assert (got - want).abs().max() < 1e-5, fmt


def test_network_trains_only_its_adapters(models) -> None:
    net = LoRANetwork(models, rank=2, kind="lokr", generator=torch.Generator().manual_seed(0))
    assert net.targets and all(t.part == "dit" for t in net.targets)
    assert {t.path.split(".")[-1] for t in net.targets} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "output_proj",
        "layer1",
        "layer2",
    }
    g = torch.Generator().manual_seed(4)
    x, sigma, ctx = (
        torch.randn(1, 16, 1, 8, 8, generator=g),
        torch.tensor([0.5]),
        torch.randn(1, 8, 128, generator=g),
    )
    with torch.no_grad():
        base = models["dit"](x, sigma, ctx)
    models["dit"].requires_grad_(False)
    with net.applied():
        out = models["dit"](x, sigma, ctx)
        assert torch.equal(out, base)  # zero update at initialisation
        out.square().mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(gr is not None for gr in grads) and any(gr.abs().sum() > 0 for gr in grads)
    assert all(p.grad is None for p in models["dit"].parameters())
    sd = net.state_dict()
    assert sd and all(k.startswith("adapters.dit:blocks/") for k in sd)


def test_network_state_dicts_and_load_from(models, tmp_path) -> None:
    net = _network(models, "lora")
    sd = net.state_dict_in("sd-scripts")
    assert "lora_unet_blocks_0_self_attn_q_proj.lora_down.weight" in sd
    assert "lora_te_layers_1_mlp_down_proj.alpha" in sd
    assert "lora_unet_llm_adapter_blocks_1_cross_attn_k_proj.lora_up.weight" in sd
    dsd = net.state_dict_in("diffusers")
    assert "transformer.transformer_blocks.0.norm3.linear_2.lora_A.weight" in dsd
    assert not any(k.endswith(".alpha") for k in dsd)
    path = net.save(tmp_path / "n.safetensors", "diffusers", dtype=torch.float32)
    fresh = _network(models, "lora")
    _randomise(fresh, 9)
    fresh.load_from(load_lora(path))
    for t, a in net.adapter_map().items():
        b = fresh.adapter_map()[t]
        assert (a.delta_weight() - b.delta_weight()).abs().max() < 1e-6


def test_info_cli(sources, capsys, tmp_path) -> None:
    assert main(["lora", "info", str(sources["lora"])]) == 0
    text = capsys.readouterr().out
    assert "format:   comfy (lora)" in text and "rank:     4" in text and "alpha:    3" in text
    assert "blocks.{n}.self_attn.q_proj" in text and "ss_output_name: x" in text
    assert main(["lora", "info", str(sources["lokr"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["fmt"] == "sd-scripts"
        and info["kinds"] == ["lokr"]
        and set(info["targets"]) == {"dit", "adapter", "te"}
    )
    # Bad input: one line, exit 2, nothing written.
    out = tmp_path / "o.safetensors"
    assert (
        main(
            [
                "lora",
                "convert",
                str(TINY / "weights" / "qwen3_tiny_te.safetensors"),
                str(out),
                "--to",
                "comfy",
            ]
        )
        == 2
    )
    assert "not a LoRA" in capsys.readouterr().err and not out.exists()
    assert main(["lora", "convert", str(sources["lora"]), str(sources["lora"]), "--to", "comfy"]) == 2
    with pytest.raises(AnimaError, match="exists"):
        convert(sources["lora"], sources["lokr"], "comfy")


def test_adapter_maths_is_consistent() -> None:
    """delta(x) (cheap path) equals x @ delta_weight().T for every kind, including fresh networks."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 5, 96, generator=g)
    adapters = [
        LoRA(torch.randn(3, 96, generator=g), torch.randn(40, 3, generator=g), alpha=1.5),
        LoKr(w1=torch.randn(4, 8, generator=g), w2_a=torch.randn(10, 2, generator=g),
             w2_b=torch.randn(2, 12, generator=g), alpha=1.0),
        LoKr.create(96, 40, rank=2, alpha=1.0, generator=g, decompose_both=True),
        LoHa(w1_a=torch.randn(40, 2, generator=g), w1_b=torch.randn(2, 96, generator=g),
             w2_a=torch.randn(40, 2, generator=g), w2_b=torch.randn(2, 96, generator=g), alpha=4.0),
    ]  # fmt: skip
    for a in adapters:
        want = x @ a.delta_weight().T
        assert (a.delta(x) - want).abs().max() < 1e-4 * max(1.0, want.abs().max().item()), a.kind
