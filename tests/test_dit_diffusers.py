"""MiniTrainDIT against diffusers' CosmosTransformer3DModel (test-time oracle only) on the tiny weights."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, load_st
from diffusers.models.transformers import transformer_cosmos
from test_dit import CASES, build, tiny_dit_state

from anima.model.config import DiTConfig
from anima.weights.diffusers_keys import dit_to_diffusers

# Spec §1.6 renames, from the product's one table; diffusers' strict load checks it.
to_diffusers_key = dit_to_diffusers


def diffusers_model(sd: dict[str, torch.Tensor], cfg: DiTConfig):
    model = transformer_cosmos.CosmosTransformer3DModel(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        num_layers=cfg.num_blocks,
        mlp_ratio=cfg.mlp_hidden / cfg.model_channels,
        text_embed_dim=cfg.crossattn_emb_channels,
        adaln_lora_dim=cfg.adaln_lora_dim,
        patch_size=(cfg.patch_temporal, cfg.patch_spatial, cfg.patch_spatial),
        rope_scale=(
            cfg.rope_t_extrapolation_ratio,
            cfg.rope_h_extrapolation_ratio,
            cfg.rope_w_extrapolation_ratio,
        ),
        concat_padding_mask=True,
        extra_pos_embed_type=None,
    )
    model.load_state_dict({to_diffusers_key(k): v for k, v in sd.items()}, strict=True)
    return model.eval()


@pytest.fixture
def no_torchvision_resize(monkeypatch: pytest.MonkeyPatch) -> None:
    """diffusers resizes the (all-zero) padding mask with torchvision, which is not installed here.

    Provide the one call it makes, nearest resize, for the duration of a test only.
    """
    mode = types.SimpleNamespace(NEAREST="nearest")

    def resize(img: torch.Tensor, size: list[int], interpolation: str = "nearest") -> torch.Tensor:
        return F.interpolate(img, size=size, mode=interpolation)

    fake = types.SimpleNamespace(functional=types.SimpleNamespace(resize=resize), InterpolationMode=mode)
    monkeypatch.setattr(transformer_cosmos, "transforms", fake, raising=False)


@pytest.mark.parametrize("case", sorted(CASES))
@torch.no_grad()
def test_matches_diffusers_cosmos(case, no_torchvision_resize):
    sd = tiny_dit_state()
    ours = build(sd)
    ref_model = diffusers_model(sd, ours.cfg)

    fx = load_st(TINY / "components" / "dit.safetensors")
    context = load_st(TINY / "components" / "adapter.safetensors")[f"{CASES[case]}.context"]
    x, sigma = fx[f"{case}.x"], fx[f"{case}.sigma"]
    _, _, _, h, w = x.shape
    # The Anima modular pipeline passes scheduler_t / num_train_timesteps = sigma (not x1000), and a
    # zero padding mask at pixel resolution [1, 1, 8h, 8w].
    ref = ref_model(
        hidden_states=x,
        timestep=sigma,
        encoder_hidden_states=context,
        padding_mask=x.new_zeros(1, 1, 8 * h, 8 * w),
        return_dict=False,
    )[0]
    got = ours(x, sigma, context)

    err = (got - ref).abs().max().item()
    rel = err / ref.abs().max().item()
    print(f"{case} vs diffusers: max abs {err:.3e}, rel {rel:.3e}")
    assert err <= 1e-4 and rel <= 1e-4
    # And diffusers agrees with the ComfyUI fixture to the same level (the oracle itself is sane).
    assert (ref - fx[f"{case}.velocity"]).abs().max().item() <= 1e-4
