"""Memory planner, text-encoder release and DiT block streaming, on the tiny model with budgets in MB.

There is no GPU here: the "device" is the CPU, and the streamer's device copies are real copies, so
the tests see exactly which tensors a block computes with and how many blocks are "on the device".
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import weakref

import pytest
import torch
from conftest import TINY, TOKENIZERS

from anima.errors import AnimaError
from anima.model.dit import MiniTrainDIT
from anima.pipeline import Pipeline, RunOptions
from anima.recipe import Recipe
from anima.runtime.memory import GB, MARGIN, ModelSizes, budget_from_gb, dit_activation_bytes, plan_memory
from anima.runtime.streaming import BlockStreamer
from anima.weights.loading import load_text_encoder

MB = 2**20
RECIPE = Recipe(prompt="1girl, red hair", width=128, height=128, steps=3, cfg=4.0, sampler="euler", seed=5)
W = TINY / "weights"


def _tiny(**options) -> Pipeline:
    """The tiny pipeline (fp32, CPU), planned for RECIPE's size under `options`."""
    return Pipeline.from_files(
        W / "anima_tiny_dit.safetensors", W / "qwen3_tiny_te.safetensors", W / "wan21_tiny_vae.safetensors",
        tokenizer_dir=TOKENIZERS,
        options=RunOptions(device="cpu", dtype="fp32", plan_size=(128, 128, 1), **options),
    )  # fmt: skip


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return _tiny(release_text_encoder=False)


@pytest.fixture(scope="module")
def reference(pipe) -> torch.Tensor:
    return pipe.generate(RECIPE).images


def _deep(pipe: Pipeline, **options) -> Pipeline:
    """The tiny pipeline with a 6-block DiT (blocks 2.. repeat the tiny blocks): deep enough that a
    budget can hold some blocks but not all, with prefetch."""
    cfg = dataclasses.replace(pipe.dit.cfg, num_blocks=6)
    sd = pipe.dit.state_dict()
    for k in [k for k in sd if k.startswith("blocks.")]:
        j, rest = k.split(".", 2)[1:]
        for copy_j in range(int(j) + 2, 6, 2):
            sd[f"blocks.{copy_j}.{rest}"] = sd[k].clone() * (0.9 if "mlp" in rest else 1.0)
    with torch.device("meta"):
        deep = MiniTrainDIT(cfg)
    deep.load_state_dict(sd, strict=True, assign=True)
    return Pipeline(
        dit=deep.eval(), adapter=pipe.adapter, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
        vae=pipe.vae, options=RunOptions(device="cpu", dtype="fp32", plan_size=(128, 128, 1), **options),
        text_encoder_loader=lambda dev: load_text_encoder(W / "qwen3_tiny_te.safetensors", device=dev),
    )  # fmt: skip


@pytest.fixture(scope="module")
def deep_pipe(pipe) -> Pipeline:
    return _deep(pipe, release_text_encoder=False)


@pytest.fixture(scope="module")
def deep_reference(deep_pipe) -> torch.Tensor:
    return deep_pipe.generate(RECIPE).images


def _activations(pipe) -> int:
    tokens = (RECIPE.width // 16) * (RECIPE.height // 16)
    return dit_activation_bytes(pipe.dit.cfg, tokens, 2, pipe.dtype)


# -- planning --------------------------------------------------------------------------------------


def test_plan_decisions_follow_the_budget():
    sizes = ModelSizes(dit_other=100 * MB, blocks=(50 * MB,) * 10, text_encoder=100 * MB, vae=80 * MB)
    act = 40 * MB
    everything = sizes.text_encoder + sizes.dit + sizes.vae + act + MARGIN
    assert plan_memory(None, sizes, act).stream_blocks is False

    roomy = plan_memory(everything + MB, sizes, act)
    assert not roomy.release_text_encoder and not roomy.stream_blocks

    no_te = plan_memory(everything - 10 * MB, sizes, act)  # the DiT fits once the TE is elsewhere
    assert no_te.release_text_encoder and no_te.text_encoder_on_host and not no_te.stream_blocks
    assert not roomy.text_encoder_on_host

    tight = plan_memory(everything - sizes.text_encoder - 200 * MB, sizes, act)
    assert tight.release_text_encoder and tight.stream_blocks
    in_device = sizes.dit_other + sizes.vae + act + MARGIN + (tight.resident_blocks + 2) * 50 * MB
    assert 0 < tight.resident_blocks < 10 and in_device <= tight.budget
    assert "streamed" in tight.describe()

    with pytest.raises(AnimaError, match="too small.*int8 weights"):
        plan_memory(sizes.dit_other + sizes.vae + act + MARGIN + 60 * MB, sizes, act)
    with pytest.raises(AnimaError, match="too small") as already_8bit:
        plan_memory(sizes.dit_other + sizes.vae + act + MARGIN + 60 * MB, sizes, act, quantized=True)
    assert "int8" not in str(already_8bit.value)


def test_budget_flag_values():
    cpu = torch.device("cpu")
    assert budget_from_gb("4", cpu) == 4 * GB
    assert budget_from_gb(None, cpu) is None and budget_from_gb("auto", cpu) is None
    for bad in ("lots", "0", "-2"):
        with pytest.raises(AnimaError, match="memory budget"):
            budget_from_gb(bad, cpu)


# -- text encoder released before sampling ------------------------------------------------------------


def test_text_encoder_released_before_the_dit_runs(pipe, reference):
    sizes = ModelSizes.of(pipe)
    act = _activations(pipe)
    budget = sizes.dit + sizes.vae + act + MARGIN + sizes.text_encoder // 2  # not everything fits
    assert plan_memory(budget, sizes, act).release_text_encoder
    planned = _tiny(vram_budget=budget / GB)
    assert planned.memory_plan.release_text_encoder and not planned.memory_plan.stream_blocks
    te_ref = weakref.ref(planned.text_encoder)
    seen: list[bool] = []
    planned.dit.register_forward_pre_hook(lambda _m, _a: seen.append(te_ref() is None))
    gc.collect()
    out = planned.generate(RECIPE).images
    assert seen and all(seen)  # gone (weakref dead) at every DiT call
    assert planned.text_encoder is None and planned.conditioner.text_encoder is None
    assert torch.equal(out, reference)
    # A new prompt reloads it from its file, encodes, and releases it again.
    seen.clear()
    other = planned.generate(RECIPE.with_(prompt="a cat")).images
    assert seen and planned.text_encoder is None
    assert not torch.equal(other, reference)


def test_cpu_runs_release_the_text_encoder_by_default():
    """The same policy for every command: on a CPU the text encoder is freed before the DiT runs."""
    assert _tiny().memory_plan.release_text_encoder
    assert not _tiny(release_text_encoder=False).memory_plan.release_text_encoder


# -- block streaming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("resident", [0, 2])
def test_streams_blocks_when_the_budget_is_smaller_than_the_dit(pipe, deep_pipe, deep_reference, resident):
    reference = deep_reference
    sizes = ModelSizes.of(deep_pipe)
    act = _activations(deep_pipe)
    block = max(sizes.blocks)
    fixed = sizes.dit_other + sizes.vae + act + MARGIN
    budget = (
        fixed + (resident + 2) * block + block // 3
    )  # less than the DiT, room for `resident` + 2 in flight
    assert budget < sizes.dit + fixed
    streaming = _deep(pipe, vram_budget=budget / GB)
    plan = streaming.memory_plan
    assert plan.stream_blocks and plan.resident_blocks == resident and plan.release_text_encoder

    dit = streaming.dit
    original = copy.deepcopy(dit.state_dict())
    host = {id(p): p.data_ptr() for p in dit.blocks.parameters()}
    during: list[tuple[int, bool]] = []

    def check(j):
        def hook(module, _args):  # runs after the streamer's pre-hook
            moved = [p.data_ptr() != host[id(p)] for p in module.parameters()]
            during.append((j, all(moved)))

        return hook

    streamer = streaming.block_streamer
    hooks = [b.register_forward_pre_hook(check(j)) for j, b in enumerate(dit.blocks)]  # after the streamer's
    try:
        assert isinstance(streamer, BlockStreamer)
        out = streaming.generate(RECIPE).images
    finally:
        streamer.detach()
        for h in hooks:
            h.remove()
    assert torch.equal(out, reference)  # identical images
    streamed = [ok for j, ok in during if j >= resident]
    assert streamed and all(streamed)  # streamed blocks computed with device copies ...
    assert not any(ok for j, ok in during if j < resident)  # ... resident ones with their own weights
    assert streamer.stats.peak_streamed_bytes <= 2 * block  # prefetch 1: at most 2 streamed blocks at once
    assert streamer.stats.loads >= RECIPE.steps * (len(dit.blocks) - resident)
    # Afterwards every parameter is its host tensor again, values untouched, state dict unchanged.
    assert all(p.data_ptr() == host[id(p)] for p in dit.blocks.parameters())
    after = dit.state_dict()
    assert list(after) == list(original) and all(torch.equal(after[k], original[k]) for k in original)


def test_streamer_follows_parameters_added_after_attach(pipe):
    """A LoRA-style wrapper added while streaming is active gets streamed and used."""
    from torch import nn

    dit = copy.deepcopy(pipe.dit)
    x = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma, ctx = torch.tensor([0.7]), torch.randn(1, 512, 128, generator=torch.Generator().manual_seed(1))

    class Delta(nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base
            self.delta = nn.Parameter(torch.full((base.out_features, base.in_features), 1e-3))

        def forward(self, h):
            return self.base(h) + nn.functional.linear(h, self.delta)

    with torch.no_grad():
        ref_model = copy.deepcopy(dit)
        ref_model.blocks[1].mlp.layer2 = Delta(ref_model.blocks[1].mlp.layer2)
        ref = ref_model(x, sigma, ctx)
        with BlockStreamer(dit.blocks, "cpu", resident=0, prefetch=1) as streamer:
            dit.blocks[1].mlp.layer2 = Delta(dit.blocks[1].mlp.layer2)
            got = dit(x, sigma, ctx)
        assert torch.equal(got, ref)
        assert streamer.stats.loads >= 2
