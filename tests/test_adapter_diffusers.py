"""LLMAdapter against diffusers' AnimaTextConditioner (an independent Apache-2.0 implementation).

diffusers is a test-time oracle only (the `oracle` extra). Both modules get the same tiny weights; the
state dicts share key names, so one strict load serves both. diffusers also zero-pads to 512 rows and
applies masks; with no masks, or all-ones masks, its first Lt rows must equal ours.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, load_st

from anima.model.adapter import LLMAdapter
from anima.model.config import AdapterConfig

diffusers = pytest.importorskip(
    "diffusers", reason="diffusers is the optional test oracle (pip install .[oracle])"
)

DIT_FILE = TINY / "weights" / "anima_tiny_dit.safetensors"
ATOL = 1e-5


@pytest.fixture(scope="module")
def models() -> tuple[LLMAdapter, torch.nn.Module]:
    prefix = "net.llm_adapter."
    sd = {k[len(prefix) :]: v.float() for k, v in load_st(DIT_FILE).items() if k.startswith(prefix)}
    cfg = AdapterConfig.from_shapes({k: tuple(v.shape) for k, v in sd.items()})
    ours = LLMAdapter(cfg)
    ours.load_state_dict(sd, strict=True)
    theirs = diffusers.AnimaTextConditioner(
        source_dim=cfg.source_dim,
        target_dim=cfg.target_dim,
        model_dim=cfg.model_dim,
        num_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_hidden / cfg.model_dim,
        target_vocab_size=cfg.vocab_size,
    )
    theirs.load_state_dict(sd, strict=True)
    return ours.eval(), theirs.eval()


def _inputs(batch: int, lt: int, ls: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, ls, 64, generator=g), torch.randint(0, 32128, (batch, lt), generator=g)


@pytest.mark.parametrize(("batch", "lt", "ls"), [(1, 1, 1), (1, 16, 14), (2, 20, 17), (1, 37, 5)])
def test_matches_diffusers_without_masks(models, batch: int, lt: int, ls: int) -> None:
    ours, theirs = models
    src, ids = _inputs(batch, lt, ls, seed=lt * 100 + ls)
    with torch.no_grad():
        a = ours(src, ids)
        b = theirs(src, ids)
    assert b.shape == (batch, max(512, lt), 128)
    assert not b[:, lt:].any()
    assert (a - b[:, :lt]).abs().max().item() <= ATOL


def test_matches_diffusers_with_all_ones_masks(models) -> None:
    ours, theirs = models
    src, ids = _inputs(2, 12, 9, seed=3)
    with torch.no_grad():
        a = ours(src, ids)
        b = theirs(src, ids, target_attention_mask=torch.ones(2, 12), source_attention_mask=torch.ones(2, 9))
    assert (a - b[:, :12]).abs().max().item() <= ATOL


def test_matches_diffusers_on_fixture_inputs(models) -> None:
    ours, theirs = models
    fx = load_st(TINY / "components" / "adapter.safetensors")
    for p in ("p0", "p1", "p2"):
        ids = fx[f"{p}.t5_ids"]
        with torch.no_grad():
            a = ours(fx[f"{p}.qwen_hidden"], ids)
            b = theirs(fx[f"{p}.qwen_hidden"], ids)[:, : ids.shape[1]]
        assert (a - b).abs().max().item() <= ATOL, p
