"""28-block LoRAs on the 40-block Anima-2.9B (anima.lora.block_remap), checked on shapes.

The models are built on the meta device (shapes, no data): which block receives which adapter is
read back from the adapters' ranks (block i of the LoRA gets rank i + 1).
"""

from __future__ import annotations

import pytest
import torch

from anima.errors import AnimaError
from anima.lora.apply import AdaptedLinear, apply_loras
from anima.lora.block_remap import INHERITED, INSERTED, fit_to_model
from anima.lora.file import LoRAFile
from anima.lora.modules import LoRA
from anima.lora.targets import Target
from anima.model.config import DiTConfig
from anima.model.dit import MiniTrainDIT

CFG = dict(
    model_channels=64, num_heads=2, head_dim=32, mlp_hidden=128, adaln_lora_dim=8, crossattn_emb_channels=32
)


def _dit(blocks: int) -> MiniTrainDIT:
    with torch.device("meta"):
        return MiniTrainDIT(DiTConfig(num_blocks=blocks, **CFG))


def _lora(blocks) -> LoRAFile:
    adapters = {}
    for i in blocks:
        for path, (out_f, in_f) in (("self_attn.q_proj", (64, 64)), ("mlp.layer1", (128, 64))):
            r = i + 1
            adapters[Target("dit", f"blocks.{i}.{path}")] = LoRA(
                torch.zeros(r, in_f), torch.zeros(out_f, r), r
            )
    adapters[Target("adapter", "blocks.0.mlp.0")] = LoRA(torch.zeros(2, 8), torch.zeros(8, 2), 2)
    return LoRAFile("test", "comfy", adapters)


def test_the_expansion_manifest() -> None:
    assert len(INSERTED) == 12 and len(INHERITED) == 28 and set(INSERTED).isdisjoint(INHERITED)
    assert (INHERITED[0], INHERITED[2], INHERITED[14], INHERITED[27]) == (0, 3, 20, 39)
    assert list(INHERITED) == sorted(INHERITED)  # the original blocks keep their order


def test_28_block_lora_lands_on_the_inherited_blocks_of_a_40_block_model() -> None:
    dit = _dit(40)
    applied = apply_loras({"dit": dit}, [(_lora(range(28)), 1.0)])
    assert applied.layers == 56
    for old, new in enumerate(INHERITED):
        for path in ("self_attn.q_proj", "mlp.layer1"):
            layer = dit.blocks[new].get_submodule(path)
            assert isinstance(layer, AdaptedLinear) and layer.stack[0][0].rank == old + 1, (old, new, path)
    for i in INSERTED:
        assert (
            type(dit.blocks[i].self_attn.q_proj) is torch.nn.Linear
        )  # inserted blocks keep native behaviour
    applied.remove()
    assert all(type(b.mlp.layer1) is torch.nn.Linear for b in dit.blocks)


def test_native_and_already_remapped_40_block_loras_are_left_alone() -> None:
    native = _lora(range(40))
    assert fit_to_model(native, 40) is native
    remapped = _lora(INHERITED)  # 28 blocks at the inherited positions: highest index 39
    assert fit_to_model(remapped, 40) is remapped
    base = _lora(range(28))
    assert fit_to_model(base, 28) is base  # on the 28-block model nothing moves
    moved = fit_to_model(base, 40)
    assert Target("dit", "blocks.39.mlp.layer1") in moved.adapters
    assert Target("adapter", "blocks.0.mlp.0") in moved.adapters  # other parts untouched


def test_ambiguous_partial_loras_are_refused() -> None:
    with pytest.raises(AnimaError, match=r"DiT blocks 0\.\.9 only.*anima does not guess"):
        fit_to_model(_lora(range(10)), 40)
    with pytest.raises(AnimaError, match="blocks 3, 7 only"):
        apply_loras({"dit": _dit(40)}, [(_lora([3, 7]), 1.0)])
