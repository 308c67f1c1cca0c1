"""Recent text-encoder passes kept across runs (`anima.text.recent_contexts`): a rerun of the same
prompts skips the encoder and its reload, with the same numbers; LoRAs on the text side and changed
weights are never answered from the kept passes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, TOKENIZERS, tiny_pipeline
from torch import nn

from anima.lora.file import save_lora
from anima.lora.modules import LoRA
from anima.lora.targets import Target
from anima.pipeline import Pipeline, RunOptions
from anima.recipe import Recipe
from anima.text.recent_contexts import RecentContexts, weights_state

W = TINY / "weights"
RECIPE = Recipe(prompt="red circle", negative_prompt="blurry", width=64, height=64, steps=2, seed=3,
                sampler="euler", cfg=4.0)  # fmt: skip


# ------------------------------------------------------------------ the pieces
def test_kept_passes_are_whole_and_least_recently_used_go_first() -> None:
    kept = RecentContexts(capacity=2)
    a, b, c = (torch.full((1,), float(i)) for i in range(3))
    kept.put("s", [("x", False), ("y", False)], [a, b])
    assert kept.get("s", [("x", False), ("y", False)]) == [a, b]
    assert kept.get("s", [("x", False)]) is None  # part of a pass: its numbers came from the pair
    assert kept.get("other state", [("x", False), ("y", False)]) is None
    kept.put("s", [("z", True)], [c])
    kept.get("s", [("x", False), ("y", False)])  # used: now the most recent
    kept.put("s", [("w", False)], [c])
    assert len(kept) == 2 and kept.get("s", [("z", True)]) is None
    assert kept.get("s", [("x", False), ("y", False)]) is not None
    with pytest.raises(ValueError):
        kept.put("s", [("x", False)], [a, b])
    with pytest.raises(ValueError):
        RecentContexts(capacity=0)


def test_weights_state_sees_wrapping_merging_and_updates_but_not_reads() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    before = weights_state(model)
    model(torch.randn(3, 4)).sum()
    assert weights_state(model) == before
    with torch.no_grad():
        model[0].weight.add_(1.0)  # an optimizer step, a merge in place
    assert weights_state(model) != before
    updated = weights_state(model)
    model[2].weight = nn.Parameter(model[2].weight.detach().clone())  # a merge into a new tensor
    assert weights_state(model) != updated
    swapped = weights_state(model)

    class Wrapped(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

    model[0] = Wrapped(model[0])  # a runtime LoRA wraps the layer
    assert weights_state(model) != swapped


# ------------------------------------------------------------------ in the pipeline
def _counted(**options) -> tuple[Pipeline, list[int]]:
    """The tiny CPU pipeline under `options` and a count of adapter calls (one per prompt that goes
    through the text side)."""
    pipe = Pipeline.from_files(
        W / "anima_tiny_dit.safetensors", W / "qwen3_tiny_te.safetensors", W / "wan21_tiny_vae.safetensors",
        tokenizer_dir=TOKENIZERS, options=RunOptions(device="cpu", dtype="fp32", **options),
    )  # fmt: skip
    calls: list[int] = []
    pipe.adapter.register_forward_hook(lambda *_: calls.append(1))
    return pipe, calls


@pytest.fixture()
def counted() -> tuple[Pipeline, list[int]]:
    """The default CPU pipeline: the encoder is released after each run."""
    return _counted()


def test_a_rerun_skips_the_encoder_and_gives_the_same_image(counted) -> None:
    pipe, calls = counted
    assert pipe.memory_plan.release_text_encoder
    first = pipe.generate(RECIPE).images
    assert len(calls) == 2 and pipe.text_encoder is None
    pipe.generate(RECIPE.with_(seed=4))
    pipe.generate(RECIPE.with_(cfg=2.0, steps=3))
    assert len(calls) == 2 and pipe.text_encoder is None  # not encoded, not even reloaded
    again = pipe.generate(RECIPE).images
    assert torch.equal(again, first)
    assert torch.equal(tiny_pipeline().generate(RECIPE).images, first)  # as a fresh process
    # One prompt of the pair changed: the pair goes through the encoder again, together.
    pipe.generate(RECIPE.with_(prompt="blue square"))
    assert len(calls) == 4
    assert torch.equal(pipe.generate(RECIPE).images, first) and len(calls) == 4  # still kept


def test_a_kept_encoder_is_reused_too() -> None:
    pipe, calls = _counted(release_text_encoder=False)
    first = pipe.generate(RECIPE).images
    assert torch.equal(pipe.generate(RECIPE).images, first) and len(calls) == 2
    with torch.no_grad():  # the encoder changed in place (training): its passes no longer hold
        pipe.text_encoder.layers[0].mlp.up_proj.weight.mul_(1.5)
    changed = pipe.generate(RECIPE).images
    assert len(calls) == 4 and not torch.equal(changed, first)
    pipe.generate(RECIPE)
    assert len(calls) == 6  # not kept while the encoder differs from how it was loaded


@pytest.fixture(scope="module")
def text_lora(tmp_path_factory) -> Path:
    g = torch.Generator().manual_seed(1)
    targets = {
        Target("adapter", "blocks.0.self_attn.q_proj"): (128, 128),
        Target("te", "layers.1.mlp.up_proj"): (192, 64),
    }
    lora = {t: LoRA(torch.randn(4, i, generator=g) * 0.3, torch.randn(o, 4, generator=g) * 0.3, alpha=4.0)
            for t, (o, i) in targets.items()}  # fmt: skip
    return save_lora(lora, tmp_path_factory.mktemp("l") / "text.safetensors", "sd-scripts")


@pytest.mark.parametrize("merge", [False, True])
def test_runs_with_text_loras_always_encode(text_lora: Path, merge: bool) -> None:
    pipe, calls = _counted(merge_loras=merge)
    base = pipe.generate(RECIPE).images
    with_lora = RECIPE.with_(loras=((str(text_lora), 0.8),))
    styled = pipe.generate(with_lora).images
    assert len(calls) == 4 and (styled - base).abs().max() > 1e-3
    assert torch.equal(pipe.generate(with_lora).images, styled) and len(calls) == 6
    assert torch.equal(pipe.generate(RECIPE).images, base) and len(calls) == 6  # the base pass, kept
