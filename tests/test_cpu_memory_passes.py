"""The CPU run's memory and text-encoding passes (issue 19): one text-encoder pass per sampling pass,
mapped pages given back as the encoder runs, 8-bit layers packed at load with the heap trimmed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import TINY, TOKENIZERS, tiny_pipeline

from anima.model import qmatmul
from anima.model.quant_linear import QuantLinear
from anima.model.text_encoder import Qwen3TextEncoder
from anima.pipeline import Pipeline, RunOptions
from anima.recipe import Recipe
from anima.recipe.regions import Region
from anima.runtime import quant, streaming
from anima.weights import mapped_pages
from anima.weights.safetensors import load_mmap, save


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return tiny_pipeline()


def test_every_prompt_of_a_pass_goes_through_the_encoder_at_once(pipe, monkeypatch) -> None:
    # Positive (with prompt editing: two texts), negative and two region prompts: one forward of the
    # text encoder, and each context equals the one its prompt gets when encoded alone.
    passes: list[int] = []
    real = Qwen3TextEncoder.forward

    def counting(self, *args, **kwargs):
        passes.append(kwargs["inputs_embeds"].shape[1])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Qwen3TextEncoder, "forward", counting)
    regions = (Region("red hair", rect=(0, 0, 0.5, 1)), Region("blue hair", rect=(0.5, 0, 1, 1)))
    recipe = Recipe.make(
        prompt="[cat:dog:2]", negative_prompt="blurry", width=64, height=64, steps=3, sampler="euler",
        seed=1, regions=regions,
    )  # fmt: skip
    pipe.generate(recipe)
    assert len(passes) == 1, passes
    texts = ["cat", "dog", "blurry", "red hair", "blue hair"]
    cache: dict = {}
    pipe.encode_contexts([(t, False) for t in texts], cache)
    assert len(passes) == 1  # the run's pass, kept (anima.text.recent_contexts)
    texts.reverse()  # another pass
    pipe.encode_contexts([(t, False) for t in texts], cache := {})
    assert len(passes) == 2
    for t in texts:
        alone = pipe.contexts([t], {})[0]
        torch.testing.assert_close(cache[t], alone, atol=1e-5, rtol=1e-5)
    assert len(passes) == 2 + len(texts)


def test_zeroed_and_plain_requests_share_one_encoding(pipe, monkeypatch) -> None:
    passes: list[int] = []
    real = Qwen3TextEncoder.forward
    monkeypatch.setattr(
        Qwen3TextEncoder, "forward", lambda self, *a, **k: passes.append(1) or real(self, *a, **k)
    )
    cache: dict = {}
    pipe.encode_contexts([("a cat", False), ("a cat", True), ("a dog", False)], cache)
    assert passes == [1] and set(cache) == {"a cat", ("zeroed", "a cat"), "a dog"}
    assert not torch.equal(cache["a cat"], cache[("zeroed", "a cat")])


def test_mapped_pages_are_given_back_after_each_layer(tmp_path, monkeypatch) -> None:
    # A layer whose weight is a view into a mapped file gives its pages back once its forward ends,
    # only while the context is open; its output does not change (the pages are read back).
    path = tmp_path / "w.safetensors"
    save({"w": torch.randn(512, 1024)}, path)
    layer = torch.nn.Linear(1024, 512, bias=False)
    layer.weight = torch.nn.Parameter(load_mmap(path)["w"], requires_grad=False)
    released: list[int] = []
    real = mapped_pages.release
    monkeypatch.setattr(mapped_pages, "release", lambda t, m: released.append(real(t, m)) or released[-1])
    x = torch.randn(3, 1024)
    before = layer(x)
    assert released == []
    with mapped_pages.released_after_use([layer]):
        inside = layer(x)
    assert len(released) == 1 and released[0] >= 1024 * 512 * 4 - 2 * 4096
    torch.testing.assert_close(layer(x), before, atol=0, rtol=0)
    torch.testing.assert_close(inside, before, atol=0, rtol=0)
    assert len(released) == 1  # the hook went with the context


def test_cpu_8bit_layers_are_packed_at_load_and_the_heap_trimmed(monkeypatch) -> None:
    # The heap is trimmed after each block (quantisation, then packing); where the CPU has a packed
    # int8 kernel every layer holds only its packed copy before the first step, and the image is
    # the one the same layers give when packed on first use.
    trims: list[int] = []
    monkeypatch.setattr(quant, "trim_heap", lambda: trims.append(1))
    w = TINY / "weights"
    opts = RunOptions(device="cpu", dtype="fp32", weights="int8")
    pipe = Pipeline.from_files(
        w / "anima_tiny_dit.safetensors", w / "qwen3_tiny_te.safetensors", w / "wan21_tiny_vae.safetensors",
        tokenizer_dir=TOKENIZERS, options=opts,
    )  # fmt: skip
    blocks = len(pipe.dit.blocks)
    assert len(trims) == 2 * blocks
    layers = [m for m in pipe.dit.modules() if isinstance(m, QuantLinear)]
    kernel = qmatmul.pick("int8", torch.device("cpu"), 1, 8, 8)
    packed = kernel in qmatmul.PACKED
    assert layers and all((m.weight.numel() == 0) == packed for m in layers)
    recipe = Recipe.make(prompt="a cat", width=64, height=64, steps=2, sampler="euler", seed=3)
    image = pipe.generate(recipe).images
    for m in layers:  # back to the plain int8 weight: packed again on first use
        m._apply(lambda t: t)
    assert all(m.weight.numel() > 0 for m in layers)
    torch.testing.assert_close(pipe.generate(recipe).images, image, atol=0, rtol=0)


def test_trim_heap_calls_malloc_trim_where_there_is_one(monkeypatch) -> None:
    calls: list[int] = []

    class Libc:
        def malloc_trim(self, pad: int) -> int:
            calls.append(pad)
            return 1

    monkeypatch.setattr(mapped_pages, "_libc", lambda: Libc())
    mapped_pages.trim_heap()
    assert calls == [0]
    monkeypatch.setattr(mapped_pages, "_libc", lambda: None)
    mapped_pages.trim_heap()  # no libc (not Linux): nothing to do, no error
    assert calls == [0]


def _int8_pipeline(**options) -> Pipeline:
    w = TINY / "weights"  # bf16 files, as the released checkpoints
    return Pipeline.from_files(
        w / "anima_tiny_dit.safetensors", w / "qwen3_tiny_te.safetensors", w / "wan21_tiny_vae.safetensors",
        tokenizer_dir=TOKENIZERS, options=RunOptions(device="cpu", dtype="fp32", weights="int8", **options),
    )  # fmt: skip


@torch.no_grad()
def test_fp32_8bit_blocks_keep_their_modulations_as_loaded_and_upcast_per_block(monkeypatch) -> None:
    # What `auto` gives on a CPU without fast bf16: the AdaLN modulations (most of a block's
    # unquantised weights) stay bf16 and are upcast block by block into one reused set of buffers;
    # the attention norms are cast, so the cross-attention K/V are still cached per prompt. The image
    # equals the one with every block cast at load (a roomy RAM budget's plan) bit for bit.
    pipe = _int8_pipeline()
    block = pipe.dit.blocks[0]
    assert block.adaln_modulation_mlp[1].weight.dtype == torch.bfloat16
    assert block.cross_attn.k_norm.weight.dtype == torch.float32
    assert pipe.dit.t_embedding_norm.weight.dtype == torch.float32
    streamer = pipe.block_streamer
    assert streamer is not None and streamer.dtype == torch.float32 and streamer.resident == 0
    assert any("upcast one block at a time" in n for n in pipe.notes)
    context = torch.randn(1, 512, pipe.dit.cfg.crossattn_emb_channels)
    context[:, 7:] = 0
    assert all(kv is not None for kv in pipe.dit.prepare_context(context).kv)

    released: list[int] = []
    real_release = streaming.release
    monkeypatch.setattr(streaming, "release", lambda t, maps: released.append(real_release(t, maps)))
    recipe = Recipe.make(prompt="a cat", width=64, height=64, steps=2, cfg=4.0, sampler="euler", seed=3)
    image = pipe.generate(recipe).images
    # Still views of the mapped file: each upcast gives the source pages back (the page cache keeps them).
    assert len(released) == 6 * streamer.stats.loads and sum(released) > 0
    stored = [p for p in block.parameters() if p.dtype == torch.bfloat16]
    assert len(streamer._scratch) == len(stored) == 6  # 3 modulations x 2 linears, shared by the blocks
    bf16 = [p for b in pipe.dit.blocks for p in b.parameters() if p.dtype == torch.bfloat16]
    per_call = sum(4 * p.numel() for p in bf16)
    assert streamer.stats.bytes_copied == per_call * streamer.stats.loads // len(pipe.dit.blocks)
    assert block.adaln_modulation_mlp[1].weight.dtype == torch.bfloat16  # given back after the forward

    cast = _int8_pipeline(ram_budget=64)  # everything fits: every block cast at load, no streamer
    assert cast.block_streamer is None
    assert cast.dit.blocks[0].adaln_modulation_mlp[1].weight.dtype == torch.float32
    assert torch.equal(cast.generate(recipe).images, image)


# Run in a fresh interpreter: mmap counts and the heap's free chunks are process-wide, so in the whole
# suite an earlier test's threads, garbage or freed chunks moved them (seen in full CI runs: a 48 MB
# request served by a free chunk left in the heap after the run, with no new mapping).
_HEAP_CHECK = """
import ctypes, ctypes.util, torch
from anima.weights import mapped_pages

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mmapped():
    return libc.mallinfo2().hblkhd

n = (48 << 20) // 4
with mapped_pages.reused_heap():
    with mapped_pages.reused_heap():  # nested (another thread's run): the outer one still holds
        pass
    base = mmapped()
    t = torch.empty(n)
    assert mmapped() - base < n * 4, "inside a run a 48 MB tensor was mapped afresh"
    del t
base = mmapped()
t = torch.empty(n)  # after the last exit: above the idle threshold, mmapped again
assert mmapped() - base >= n * 4, "after the run a 48 MB tensor still came from the heap"
print("ok")
"""


@pytest.mark.skipif(not hasattr(mapped_pages._libc(), "mallinfo2"), reason="needs glibc 2.33+ (mallinfo2)")
def test_reused_heap_serves_run_sized_tensors_from_the_heap_and_restores_after() -> None:
    # 48 MB: above the most glibc's adaptive threshold ever reaches (32 MB), so always mmapped by
    # default; under the run threshold (64 MB), so from the heap inside.
    done = subprocess.run([sys.executable, "-c", _HEAP_CHECK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_reused_heap_sets_and_restores_the_thresholds(monkeypatch) -> None:
    calls: list[tuple[int, int]] = []

    class Libc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

        def malloc_trim(self, pad: int) -> int:
            calls.append(("trim", pad))
            return 1

    monkeypatch.setattr(mapped_pages, "_libc", lambda: Libc())
    with mapped_pages.reused_heap():
        assert calls == [(-3, mapped_pages.RUN_MMAP_THRESHOLD), (-1, mapped_pages.RUN_TRIM_THRESHOLD)]
    assert calls[2:] == [
        (-3, mapped_pages.IDLE_MMAP_THRESHOLD), (-1, mapped_pages.IDLE_TRIM_THRESHOLD), ("trim", 0)
    ]  # fmt: skip
    monkeypatch.setattr(mapped_pages, "_libc", lambda: None)
    with mapped_pages.reused_heap():  # no libc: nothing to set, no error
        pass
