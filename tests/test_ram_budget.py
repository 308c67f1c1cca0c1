"""``--ram-budget`` (issue 19): the CPU counterpart of ``--vram-budget``, planned from the same sizes.

The plan keeps as many DiT blocks in the compute dtype as the budget allows; the others stay in
their file's dtype (bf16) and are upcast one block at a time around their forward, which is exact
(bf16 -> fp32 loses nothing), so the image equals the unbudgeted fp32 run's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, TOKENIZERS
from safetensors.torch import load_file, save_file

from anima.cli import build_parser
from anima.errors import AnimaError
from anima.pipeline import Pipeline, RunOptions
from anima.recipe import Recipe
from anima.runtime.memory import GB, MARGIN, TEXT_ACTIVATIONS, ModelSizes, dit_activation_bytes, plan_ram

MB = 2**20
RECIPE = Recipe(prompt="1girl, red hair", width=128, height=128, steps=2, cfg=4.0, sampler="euler", seed=3)
W = TINY / "weights"  # bf16 files


@pytest.fixture(scope="module")
def deep_file(tmp_path_factory) -> Path:
    """The tiny DiT with 6 blocks (blocks 2.. repeat 0 and 1), in bf16: with 2 blocks, one upcast
    copy in flight costs as much as keeping both in fp32, so nothing could be planned."""
    sd = load_file(W / "anima_tiny_dit.safetensors")
    for k in [k for k in sd if ".blocks." in k]:
        head, rest = k.split(".blocks.", 1)
        j, tail = rest.split(".", 1)
        for copy_j in range(int(j) + 2, 6, 2):
            sd[f"{head}.blocks.{copy_j}.{tail}"] = sd[k].clone()
    out = tmp_path_factory.mktemp("deep") / "anima_deep_dit.safetensors"
    save_file(sd, out)
    return out


def _tiny(dit: Path, **options) -> Pipeline:
    return Pipeline.from_files(
        dit, W / "qwen3_tiny_te.safetensors", W / "wan21_tiny_vae.safetensors",
        tokenizer_dir=TOKENIZERS,
        options=RunOptions(device="cpu", dtype="fp32", plan_size=(128, 128, 1), **options),
    )  # fmt: skip


SIZES = ModelSizes(dit_other=100 * MB, blocks=(200 * MB,) * 10, text_encoder=300 * MB, vae=80 * MB)
STORED = (100 * MB,) * 10  # bf16 on file, fp32 to compute
ACT = 40 * MB


def test_ram_plan_keeps_the_compute_dtype_while_it_fits() -> None:
    phase = SIZES.text_encoder + TEXT_ACTIVATIONS  # the text phase is the larger one here
    roomy = plan_ram(SIZES.dit + phase + MARGIN, SIZES, STORED, ACT, quantized=False)
    assert roomy.ram and not roomy.stream_blocks and roomy.resident_blocks == 10
    assert roomy.release_text_encoder and "compute dtype" in roomy.describe()

    budget = SIZES.dit_other + phase + MARGIN + 4 * 200 * MB + 6 * 100 * MB + 200 * MB
    tight = plan_ram(budget, SIZES, STORED, ACT, quantized=False)
    assert tight.stream_blocks and tight.resident_blocks == 4 and tight.prefetch == 0
    assert "upcast" in tight.describe()
    used = SIZES.dit_other + 4 * 200 * MB + 6 * 100 * MB + 200 * MB  # + one upcast block in flight
    assert used + phase + MARGIN <= tight.budget

    with pytest.raises(AnimaError, match="RAM budget .* too small.*int8 weights") as err:
        plan_ram(SIZES.dit_other + phase + MARGIN + 10 * 100 * MB, SIZES, STORED, ACT, quantized=False)
    assert err.value.setting == "ram_budget"
    with pytest.raises(AnimaError, match="too small") as quantized:  # 8-bit blocks: nothing to upcast
        plan_ram(SIZES.dit, SIZES, SIZES.blocks, ACT, quantized=True)
    assert "int8" not in str(quantized.value)


def test_ram_budget_options_and_flag() -> None:
    assert RunOptions(ram_budget="6").ram_budget == 6.0 and RunOptions(ram_budget="auto").ram_budget == "auto"
    with pytest.raises(AnimaError, match="memory budget") as bad:
        RunOptions(ram_budget="lots")
    assert bad.value.setting == "ram_budget"
    with pytest.raises(AnimaError, match="CPU run"):
        RunOptions(device="cuda", ram_budget=4)
    args = build_parser().parse_args(["generate", "x", "--ram-budget", "3.5"])
    assert args.ram_budget == "3.5"


@torch.no_grad()
def test_a_tight_ram_budget_upcasts_blocks_and_gives_the_same_image(deep_file) -> None:
    reference = _tiny(deep_file)
    sizes = ModelSizes.of(reference)  # before the run releases the text encoder
    want = reference.generate(RECIPE).images
    act = dit_activation_bytes(reference.dit.cfg, (128 // 16) ** 2, 2, torch.float32)
    assert reference.dit.blocks[0].mlp.layer1.weight.dtype == torch.float32
    del reference
    block = max(sizes.blocks)
    phase = max(sizes.text_encoder + TEXT_ACTIVATIONS, sizes.vae + act)
    # Room for block 0 in fp32, blocks 1-5 in bf16 and one upcast copy: not for all 6 in fp32.
    budget = sizes.dit_other + phase + MARGIN + block + 5 * (block // 2) + block + 256 * 1024
    assert budget < sizes.dit + phase + MARGIN
    budgeted = _tiny(deep_file, ram_budget=budget / GB)
    plan = budgeted.memory_plan
    assert plan.ram and plan.stream_blocks and plan.resident_blocks == 1, plan.describe()
    dit = budgeted.dit
    assert dit.blocks[0].mlp.layer1.weight.dtype == torch.float32  # resident: cast once
    assert dit.blocks[5].mlp.layer1.weight.dtype == torch.bfloat16  # kept as loaded
    assert dit.t_embedding_norm.weight.dtype == torch.float32
    got = budgeted.generate(RECIPE).images
    # The upcast is exact; the streamed blocks project their cross-attention K/V in their forward
    # over all 512 context rows, where the cached blocks share the padding's key (`ContextKV`): the
    # same maths, another summation order.
    assert (got - want).abs().max() <= 1e-5
    assert budgeted.block_streamer.stats.loads >= RECIPE.steps * 5
    assert budgeted.block_streamer.stats.peak_streamed_bytes <= block  # one upcast block at a time
    assert dit.blocks[1].mlp.layer1.weight.dtype == torch.bfloat16  # the copies were dropped again
    assert budgeted.text_encoder is None  # released after encoding
