"""`RunOptions`: checked where they are made, applied once when the pipeline is built, and the same
policy whichever front end builds the pipeline (issue 12)."""

from __future__ import annotations

import pytest
from conftest import TINY, TOKENIZERS

from anima.errors import AnimaError
from anima.jobs.batch import PipelineSpec
from anima.pipeline import Pipeline, RunOptions
from anima.recipe import Recipe
from anima.runtime.quant import QuantLinear
from anima.weights.discovery import ModelSet

W = TINY / "weights"
MODELS = ModelSet(
    "anima_tiny_dit", W / "anima_tiny_dit.safetensors", W / "qwen3_tiny_te.safetensors",
    W / "wan21_tiny_vae.safetensors", TOKENIZERS / "qwen", TOKENIZERS / "t5", "explicit",
)  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"dtype": "fp8"}, "unknown dtype 'fp8'"),
        ({"vae_dtype": "int4"}, "unknown VAE dtype 'int4'"),
        ({"weights": "nf4"}, "weights format must be int8 or fp8"),
        ({"vram_budget": "lots"}, "memory budget takes a number of GB"),
        ({"vram_budget": -1.0}, "memory budget must be > 0 GB"),
        ({"attention": "flash9"}, "unknown attention backend"),
        ({"plan_size": (0, 64, 1)}, "plan size must be positive"),
        ({"device": ""}, "device must be a name"),
    ],
)
def test_options_are_checked_where_made(fields, needle) -> None:
    with pytest.raises(AnimaError, match=None) as err:
        RunOptions(**fields)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_budget_text_is_read_once_into_a_number() -> None:
    assert RunOptions(vram_budget="4").vram_budget == 4.0
    assert RunOptions(vram_budget="auto").vram_budget == "auto"
    assert RunOptions(vram_budget=None).vram_budget is None


def test_options_are_applied_once_at_construction_and_stamped_into_recipes() -> None:
    pipe = Pipeline.load(MODELS, RunOptions(device="cpu", dtype="fp32", weights="int8"))
    assert any("DiT layers in int8" in n for n in pipe.notes)
    assert any(isinstance(m, QuantLinear) for m in pipe.dit.modules())
    recipe = Recipe("1girl", width=64, height=64, steps=1, sampler="euler")
    recorded = pipe.generate(recipe).recipes[0]
    assert (recorded.model, recorded.dtype, recorded.perf.weights) == ("anima_tiny_dit", "fp32", "int8")
    assert recorded.model_hash == pipe.model_hash != ""
    assert pipe.record(recorded) is recorded  # already says how it was made: nothing new is built


def test_every_front_end_builds_from_the_same_options() -> None:
    """The server and the batch/Ray spec hand their options to the one constructor unchanged (the
    server only adds its folder-bound LoRA resolver)."""
    from anima.server.service import PipelineService

    options = RunOptions(device="cpu", dtype="fp32", release_text_encoder=False, attention="sdpa")
    spec_pipe = PipelineSpec(MODELS, options).build()
    assert spec_pipe.options == options and not spec_pipe.memory_plan.release_text_encoder
    service = PipelineService([MODELS], options=options)
    served = service._pipeline("anima_tiny_dit")
    assert served.options == options and served.options.lora_resolver == service.resolve_lora


def test_pipeline_kwargs_api_takes_flat_settings() -> None:
    pipe = Pipeline.from_files(
        MODELS.dit, MODELS.text_encoder, MODELS.vae, tokenizer_dir=TOKENIZERS, device="cpu", dtype="fp32"
    )
    result = pipe("1girl", width=64, height=64, steps=1, sampler="euler", hires_scale=1.5, hires_steps=1)
    assert result.images.shape == (1, 96, 96, 3) and result.recipes[0].hires.scale == 1.5
    with pytest.raises(AnimaError, match="unknown recipe field 'hires_scal'"):
        pipe("1girl", hires_scal=1.5)
