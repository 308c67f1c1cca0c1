"""Segment-wise Qwen / T5 tokenisation against the ComfyUI fixture ids (spec §3.2)."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import pytest
from conftest import TINY, TOKENIZERS, load_st

from anima.errors import AnimaError
from anima.text.prompt_weights import as_float32
from anima.text.tokenize import AnimaTokenizer, TokenizedPrompt

CASES = json.loads((TINY / "cases.json").read_text())
BY_ID = {c["id"]: c for c in CASES["cases"]}
TOKENIZER_PROMPTS = BY_ID["component_tokenizer"]["prompts"]
E2E = [c for c in CASES["cases"] if c["kind"] in ("txt2img", "img2img")]


@pytest.fixture(scope="module")
def tok() -> AnimaTokenizer:
    return AnimaTokenizer.from_dirs(TOKENIZERS / "qwen", TOKENIZERS / "t5")


def _check(got: TokenizedPrompt, want: dict) -> None:
    assert got.qwen_ids == want["qwen_ids"]
    assert got.t5_ids == want["t5_ids"]
    # cases.json stores the Python-float weights; the tensors the model sees are float32
    assert got.t5_weights == [as_float32(w) for w in want["t5_weights"]]


@pytest.mark.parametrize("case", TOKENIZER_PROMPTS, ids=lambda c: repr(c["prompt"])[:40])
def test_component_tokenizer_prompts(tok: AnimaTokenizer, case: dict) -> None:
    _check(tok.tokenize(case["prompt"]), case)


@pytest.mark.parametrize("case", E2E, ids=lambda c: c["id"])
def test_e2e_case_tokens(tok: AnimaTokenizer, case: dict) -> None:
    _check(tok.tokenize(case["prompt"]), case["tokens"]["positive"])
    _check(tok.tokenize(case["negative_prompt"]), case["tokens"]["negative"])


def test_text_encoder_fixture_tensors(tok: AnimaTokenizer) -> None:
    fx = load_st(TINY / "components" / "text_encoder.safetensors")
    for case in BY_ID["component_text_encoder"]["prompts"]:
        p = f"p{case['index']}"
        got = tok.tokenize(case["prompt"])
        assert got.qwen_ids == fx[f"{p}.qwen_ids"][0].tolist()
        assert got.t5_ids == fx[f"{p}.t5_ids"][0].tolist()
        assert got.t5_weights == fx[f"{p}.t5_weights"][0].tolist()  # exact float32 values


def test_empty_prompt(tok: AnimaTokenizer) -> None:
    assert tok.tokenize("") == TokenizedPrompt(qwen_ids=[151643], t5_ids=[1], t5_weights=[1.0])
    # a prompt that is only an empty group tokenizes to nothing as well
    assert tok.tokenize("()") == tok.tokenize("")


def test_segments_are_tokenized_separately(tok: AnimaTokenizer) -> None:
    got = tok.tokenize("a (red:1.2)")
    assert got.qwen_ids == tok.qwen_word_ids("a ") + tok.qwen_word_ids("red")
    assert got.qwen_ids != tok.qwen_word_ids("a red")
    assert got.t5_ids == tok.t5_word_ids("a ") + tok.t5_word_ids("red") + [1]
    assert got.t5_weights == [1.0] * len(tok.t5_word_ids("a ")) + [as_float32(1.2)] * 1 + [1.0]


def test_long_prompt_is_not_truncated(tok: AnimaTokenizer) -> None:
    prompt = ", ".join(["masterpiece"] * 400)
    got = tok.tokenize(prompt)
    assert len(got.t5_ids) > 512 and len(got.qwen_ids) > 512
    assert got.t5_ids[-1] == 1 and len(got.t5_weights) == len(got.t5_ids)


def test_embedding_names_are_dropped(tok: AnimaTokenizer, caplog: pytest.LogCaptureFixture) -> None:
    # ComfyUI with a missing textual-inversion file: the name goes, the rest of the word stays
    # (including a trailing comma cut off the name), and a space before "embedding:" ends a word.
    with caplog.at_level(logging.WARNING, logger="anima.text.tokenize"):
        got = tok.tokenize("a embedding:foo, b")
    assert "embedding:foo," in caplog.text
    assert got.qwen_ids == tok.qwen_word_ids("a") + tok.qwen_word_ids(", b")
    assert got.t5_ids == tok.t5_word_ids("a") + tok.t5_word_ids(", b") + [1]
    assert tok.tokenize("embedding:foo") == tok.tokenize("")


def _random_texts(n: int, seed: int) -> list[str]:
    pieces = list("abcXYZ  \n\t\r,.()[]:_-'!?0123456789éüÜ日本語한국ｆ😀\u3000\u00a0\u200b\u0301\x85")
    pieces += [
        "<|endoftext|>",
        "<|im_start|>",
        "<think>",
        "</s>",
        "<pad>",
        "<unk>",
        "<extra_id_5>",
        " 's",
        "  ",
    ]
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 14))) for _ in range(n)]


def test_matches_transformers_tokenizers(tok: AnimaTokenizer) -> None:
    """The rebuilt pipelines equal what the reference ran: transformers' Qwen2Tokenizer and
    T5TokenizerFast loaded from the same folders (transformers 5 rebuilds the T5 pre-tokenizer)."""
    from transformers import Qwen2Tokenizer, T5TokenizerFast

    qwen = Qwen2Tokenizer.from_pretrained(str(TOKENIZERS / "qwen"))
    t5 = T5TokenizerFast.from_pretrained(str(TOKENIZERS / "t5"))
    texts = _random_texts(1500, seed=0) + [c["prompt"] for c in TOKENIZER_PROMPTS]
    for text in texts:
        assert tok.qwen_word_ids(text) == qwen(text)["input_ids"], repr(text)
        # the reference drops the </s> that T5 appends to every word
        assert tok.t5_word_ids(text) == t5(text)["input_ids"][:-1], repr(text)


def test_tokenizer_json_only_folders(tok: AnimaTokenizer, tmp_path: Path) -> None:
    """Folders written by transformers 5 ``save_pretrained`` (e.g. a diffusers Anima folder) hold only
    tokenizer.json; they must tokenize exactly like ComfyUI's folders."""
    from transformers import Qwen2Tokenizer, T5TokenizerFast

    Qwen2Tokenizer.from_pretrained(str(TOKENIZERS / "qwen")).save_pretrained(str(tmp_path / "qwen"))
    T5TokenizerFast.from_pretrained(str(TOKENIZERS / "t5")).save_pretrained(str(tmp_path / "t5"))
    assert not (tmp_path / "qwen" / "vocab.json").exists()
    saved = AnimaTokenizer.from_dirs(tmp_path / "qwen", tmp_path / "t5")
    for text in _random_texts(300, seed=1) + [c["prompt"] for c in TOKENIZER_PROMPTS]:
        assert saved.tokenize(text) == tok.tokenize(text), repr(text)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(AnimaError, match="nope.*not found"):
        AnimaTokenizer.from_dirs(tmp_path / "nope", TOKENIZERS / "t5")


@pytest.mark.parametrize("missing", ["vocab.json", "merges.txt", "tokenizer_config.json"])
def test_missing_qwen_file(tmp_path: Path, missing: str) -> None:
    qwen = tmp_path / "qwen"
    shutil.copytree(TOKENIZERS / "qwen", qwen)
    (qwen / missing).unlink()
    with pytest.raises(AnimaError, match=f"{qwen}.*no {missing}"):
        AnimaTokenizer.from_dirs(qwen, TOKENIZERS / "t5")


def test_missing_t5_file(tmp_path: Path) -> None:
    (tmp_path / "t5").mkdir()
    with pytest.raises(AnimaError, match="t5.*no tokenizer.json"):
        AnimaTokenizer.from_dirs(TOKENIZERS / "qwen", tmp_path / "t5")


def test_corrupt_t5_file(tmp_path: Path) -> None:
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "tokenizer.json").write_text("{not json")
    with pytest.raises(AnimaError, match="unreadable tokenizer file"):
        AnimaTokenizer.from_dirs(TOKENIZERS / "qwen", tmp_path / "t5")


def test_swapped_folders() -> None:
    with pytest.raises(AnimaError, match="not a byte-level BPE"):
        AnimaTokenizer.from_dirs(TOKENIZERS / "t5", TOKENIZERS / "qwen")
