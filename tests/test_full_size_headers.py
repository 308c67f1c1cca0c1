"""The complete official configs, built on the meta device from synthetic full-size files.

The files are sparse: a real safetensors header with the official key names and shapes (written
here from the spec tables, not from our modules) and a hole where the 5.4 GB of data would be. The
real loaders read them through the same mmap + strict path as a real release, onto `meta`.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

import pytest
import torch
from conftest import TINY

from anima.model.config import AdapterConfig, DiTConfig, TextEncoderConfig, VAEConfig
from anima.weights import loading

D, R, HD = 2048, 256, 128


def dit_shapes(blocks: int = 28) -> dict[str, list[int]]:
    s: dict[str, list[int]] = {
        "net.x_embedder.proj.1.weight": [D, 68],
        "net.t_embedder.1.linear_1.weight": [D, D],
        "net.t_embedder.1.linear_2.weight": [3 * D, D],
        "net.t_embedding_norm.weight": [D],
        "net.final_layer.adaln_modulation.1.weight": [R, D],
        "net.final_layer.adaln_modulation.2.weight": [2 * D, R],
        "net.final_layer.linear.weight": [64, D],
    }
    for i in range(blocks):
        b = f"net.blocks.{i}."
        for p in ("q", "k", "v", "output"):
            s[f"{b}self_attn.{p}_proj.weight"] = [D, D]
        for p in ("q", "output"):
            s[f"{b}cross_attn.{p}_proj.weight"] = [D, D]
        for p in ("k", "v"):
            s[f"{b}cross_attn.{p}_proj.weight"] = [D, 1024]
        for a in ("self_attn", "cross_attn"):
            s[f"{b}{a}.q_norm.weight"] = [HD]
            s[f"{b}{a}.k_norm.weight"] = [HD]
        s[f"{b}mlp.layer1.weight"] = [4 * D, D]
        s[f"{b}mlp.layer2.weight"] = [D, 4 * D]
        for m in ("self_attn", "cross_attn", "mlp"):
            s[f"{b}adaln_modulation_{m}.1.weight"] = [R, D]
            s[f"{b}adaln_modulation_{m}.2.weight"] = [3 * D, R]
    a = "net.llm_adapter."
    s[f"{a}embed.weight"] = [32128, 1024]
    s[f"{a}out_proj.weight"] = [1024, 1024]
    s[f"{a}out_proj.bias"] = [1024]
    s[f"{a}norm.weight"] = [1024]
    for j in range(6):
        b = f"{a}blocks.{j}."
        for n in ("self_attn", "cross_attn", "mlp"):
            s[f"{b}norm_{n}.weight"] = [1024]
        for at in ("self_attn", "cross_attn"):
            for p in ("q", "k", "v", "o"):
                s[f"{b}{at}.{p}_proj.weight"] = [1024, 1024]
            s[f"{b}{at}.q_norm.weight"] = [64]
            s[f"{b}{at}.k_norm.weight"] = [64]
        s[f"{b}mlp.0.weight"], s[f"{b}mlp.0.bias"] = [4096, 1024], [4096]
        s[f"{b}mlp.2.weight"], s[f"{b}mlp.2.bias"] = [1024, 4096], [1024]
    return s


def te_shapes() -> dict[str, list[int]]:
    s = {"model.embed_tokens.weight": [151936, 1024], "model.norm.weight": [1024]}
    for i in range(28):
        b = f"model.layers.{i}."
        s[f"{b}self_attn.q_proj.weight"] = [2048, 1024]
        s[f"{b}self_attn.k_proj.weight"] = [1024, 1024]
        s[f"{b}self_attn.v_proj.weight"] = [1024, 1024]
        s[f"{b}self_attn.o_proj.weight"] = [1024, 2048]
        s[f"{b}self_attn.q_norm.weight"] = [128]
        s[f"{b}self_attn.k_norm.weight"] = [128]
        s[f"{b}mlp.gate_proj.weight"] = [3072, 1024]
        s[f"{b}mlp.up_proj.weight"] = [3072, 1024]
        s[f"{b}mlp.down_proj.weight"] = [1024, 3072]
        s[f"{b}input_layernorm.weight"] = [1024]
        s[f"{b}post_attention_layernorm.weight"] = [1024]
    return s


def vae_shapes() -> dict[str, list[int]]:
    """The tiny VAE key list (official names) scaled from base width 24 to 96: every channel
    count is a multiple of the base width, while RGB (3), latent (16/32) and kernels are not."""
    s = {}
    for line in (TINY / "weights" / "keys_vae.txt").read_text().splitlines():
        name, shape, _ = line.split("\t")
        dims = [int(d) for d in shape.split("x")]
        s[name] = [d * 4 if d % 24 == 0 else d for d in dims]
    return s


def write_sparse(path: Path, shapes: dict[str, list[int]]) -> Path:
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for k in sorted(shapes):
        n = math.prod(shapes[k]) * 2
        header[k] = {"dtype": "BF16", "shape": shapes[k], "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + off)  # a hole, not 5 GB of disk
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("full")
    return {
        "dit": write_sparse(d / "anima-base-v1.0.safetensors", dit_shapes()),
        "te": write_sparse(d / "qwen_3_06b_base.safetensors", te_shapes()),
        "vae": write_sparse(d / "qwen_image_vae.safetensors", vae_shapes()),
    }


def _count(*modules: torch.nn.Module) -> tuple[int, int]:
    sds = [m.state_dict() for m in modules]
    return sum(len(sd) for sd in sds), sum(v.numel() for sd in sds for v in sd.values())


def test_spec_tables_are_self_consistent() -> None:
    # Independent of our model code: the synthetic headers reproduce the spec's counts.
    assert len(dit_shapes()) == 685
    assert sum(math.prod(v) for v in dit_shapes().values()) == 2_091_068_928
    assert len(te_shapes()) == 310
    assert sum(math.prod(v) for v in te_shapes().values()) == 596_049_920
    assert len(vae_shapes()) == 194
    assert sum(math.prod(v) for v in vae_shapes().values()) == 126_892_531


def test_full_dit_loads_strictly_on_meta(files: dict[str, Path]) -> None:
    dit, adapter = loading.load_dit(files["dit"], device="meta", dtype=torch.bfloat16)
    assert dit.cfg == DiTConfig()
    assert _count(dit, adapter) == (685, 2_091_068_928)
    assert all(p.device.type == "meta" for p in dit.parameters())
    assert DiTConfig.from_shapes({k[4:]: tuple(v) for k, v in dit_shapes().items()}) == DiTConfig()
    ad = {k[16:]: tuple(v) for k, v in dit_shapes().items() if k.startswith("net.llm_adapter.")}
    assert AdapterConfig.from_shapes(ad) == AdapterConfig()


def test_full_text_encoder_and_vae_load_strictly_on_meta(files: dict[str, Path]) -> None:
    te = loading.load_text_encoder(files["te"], device="meta")
    assert _count(te) == (310, 596_049_920)
    assert (
        TextEncoderConfig.from_shapes({k[6:]: tuple(v) for k, v in te_shapes().items()})
        == TextEncoderConfig()
    )
    vae = loading.load_vae(files["vae"], device="meta", dtype=torch.bfloat16)
    assert _count(vae) == (194, 126_892_531)
    assert VAEConfig.from_shapes(vae_shapes()) == VAEConfig()


def test_community_40_block_variant_is_counted_not_assumed(tmp_path: Path) -> None:
    path = write_sparse(tmp_path / "anima-2.9b.safetensors", dit_shapes(blocks=40))
    dit, _ = loading.load_dit(path, device="meta", dtype=torch.bfloat16)
    n_blocks = {int(m.group(1)) for k in dit.state_dict() if (m := re.match(r"blocks\.(\d+)\.", k))}
    assert len(n_blocks) == 40


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", ""])
def test_other_dit_prefixes(tmp_path: Path, prefix: str) -> None:
    shapes = {prefix + k[4:]: v for k, v in dit_shapes(blocks=1).items()}
    dit, _ = loading.load_dit(write_sparse(tmp_path / "x.safetensors", shapes), device="meta", dtype=None)
    assert len(dit.blocks) == 1
