"""Prompt -> Qwen3 ids, T5 ids and per-token weights, as ComfyUI tokenizes for Anima (anima-spec §3.2).

The prompt is first cut into weighted segments (`anima.text.prompt_weights`); **each segment is tokenized on
its own** and the ids are concatenated, which changes the ids, not only the weights.

- Qwen side: the Qwen2.5 byte-level BPE, no special tokens added, never truncated; all weights are 1.
  An empty prompt becomes the single pad id ``<|endoftext|>`` (151643).
- T5 side: the t5-v1_1 SentencePiece Unigram; each segment's ids keep the segment weight, and one
  ``</s>`` with weight 1.0 closes the whole prompt (an empty prompt gives just ``[</s>]``).

The two pipelines are rebuilt with the `tokenizers` library so that they equal what the reference ran
(``transformers`` 5.x ``Qwen2Tokenizer`` / ``T5TokenizerFast`` on ComfyUI's tokenizer folders) without
importing transformers: for T5 that means the SentencePiece charsmap normaliser followed by a
whitespace split and a "▁" prepended to every word, which is what transformers 5 builds, not the
pipeline written in tokenizer.json (the two differ on unusual whitespace next to special tokens).
tests/test_tokenize.py checks both against transformers on random strings.

ComfyUI also treats ``embedding:<name>`` as a textual-inversion embedding. Anima has none to load, so
such a name is dropped with a warning (what ComfyUI does when the file is missing) and the rest of the
word is tokenized.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anima.errors import AnimaError
from anima.text.prompt_weights import as_float32, parse_prompt_weights

log = logging.getLogger(__name__)

QWEN_PAD_TOKEN = "<|endoftext|>"
T5_EOS_TOKEN = "</s>"
# Same pre-tokenisation regex as the Qwen2 / Qwen2.5 tokenizers.
_QWEN_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_EMBEDDING = "embedding:"
_EMBEDDING_SPLIT = re.compile(f"[ \n]{re.escape(_EMBEDDING)}")


@dataclass(frozen=True)
class TokenizedPrompt:
    """Token ids of one prompt. `t5_weights` are float32 values (as Python floats), one per T5 id."""

    qwen_ids: list[int]
    t5_ids: list[int]
    t5_weights: list[float]


def _need_file(folder: Path, name: str, what: str, expected: str) -> Path:
    if not folder.is_dir():
        raise AnimaError(f"{folder}: {what} tokenizer folder not found (it should hold {expected})")
    path = folder / name
    if not path.is_file():
        raise AnimaError(f"{folder}: {what} tokenizer folder has no {name} (it should hold {expected})")
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AnimaError(f"{path}: unreadable tokenizer file ({exc})") from None


def _qwen_pipeline(tok) -> None:
    """Qwen2 / Qwen2.5 / Qwen3 pre-processing: NFC, the Qwen split regex, then byte-level."""
    from tokenizers import Regex, normalizers, pre_tokenizers

    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _add_control_tokens(tok, folder: Path, config: dict) -> None:
    """Control tokens (<|endoftext|>, <|im_start|>, <think>, ...) are matched whole in the text."""
    from tokenizers import AddedToken

    added = config.get("added_tokens_decoder", {})
    for idx, spec in sorted(added.items(), key=lambda kv: int(kv[0])):
        token = AddedToken(
            spec["content"],
            single_word=spec.get("single_word", False),
            lstrip=spec.get("lstrip", False),
            rstrip=spec.get("rstrip", False),
            normalized=spec.get("normalized", False),
            special=spec.get("special", True),
        )
        if token.special:
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])
        if tok.token_to_id(spec["content"]) != int(idx):
            raise AnimaError(
                f"{folder}: tokenizer_config.json places '{spec['content']}' at an unexpected id"
            )


def _load_qwen(folder: Path):
    """ComfyUI's folder (vocab.json + merges.txt + tokenizer_config.json), or a saved tokenizer.json
    (diffusers ``tokenizer/``) whose BPE model and added tokens are used with the same pipeline."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    expected = "vocab.json, merges.txt and tokenizer_config.json, or tokenizer.json"
    if not (folder / "vocab.json").is_file() and (folder / "tokenizer.json").is_file():
        path = folder / "tokenizer.json"
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises bare Exception subclasses for malformed files
            raise AnimaError(f"{path}: unreadable Qwen tokenizer.json ({exc})") from None
        if not isinstance(tok.model, BPE):
            raise AnimaError(f"{path}: not a byte-level BPE (Qwen) tokenizer")
    else:
        vocab = _need_file(folder, "vocab.json", "Qwen", expected)
        merges = _need_file(folder, "merges.txt", "Qwen", expected)
        config = _read_json(_need_file(folder, "tokenizer_config.json", "Qwen", expected))
        try:
            tok = Tokenizer(BPE.from_file(str(vocab), str(merges)))
        except Exception as exc:
            raise AnimaError(f"{folder}: unreadable Qwen vocab.json / merges.txt ({exc})") from None
        _add_control_tokens(tok, folder, config)
    _qwen_pipeline(tok)
    if tok.token_to_id(QWEN_PAD_TOKEN) is None:
        raise AnimaError(f"{folder}: not a Qwen tokenizer ({QWEN_PAD_TOKEN} is not in its vocabulary)")
    return tok


def _find_charsmap(normalizer: Any) -> str | None:
    """The SentencePiece precompiled charsmap inside a tokenizer.json normaliser, if any."""
    if isinstance(normalizer, dict):
        if normalizer.get("type") == "Precompiled":
            return normalizer.get("precompiled_charsmap")
        for child in normalizer.get("normalizers", []):
            found = _find_charsmap(child)
            if found is not None:
                return found
    return None


def _load_t5(folder: Path):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers

    path = _need_file(folder, "tokenizer.json", "T5", "tokenizer.json")
    spec = _read_json(path)
    try:
        tok = Tokenizer.from_str(json.dumps(spec))
    except Exception as exc:
        raise AnimaError(f"{path}: unreadable T5 tokenizer.json ({exc})") from None
    if spec.get("model", {}).get("type") != "Unigram":
        raise AnimaError(f"{path}: not a SentencePiece (Unigram) T5 tokenizer")
    charsmap = _find_charsmap(spec.get("normalizer"))
    tok.normalizer = normalizers.Precompiled(base64.b64decode(charsmap)) if charsmap else None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    if tok.token_to_id(T5_EOS_TOKEN) is None:
        raise AnimaError(f"{path}: not a T5 tokenizer ({T5_EOS_TOKEN} is not in its vocabulary)")
    return tok


def _words(segment: str) -> list[str]:
    """ComfyUI's split of a segment before tokenizing: ``embedding:`` after a space or newline starts a
    new word (the space or newline itself is dropped)."""
    parts = _EMBEDDING_SPLIT.split(segment)
    words = [parts[0]] + [_EMBEDDING + p for p in parts[1:]]
    return [w for w in words if w]


def _without_embedding_name(word: str) -> str:
    """Drop the textual-inversion name from ``embedding:<name> rest`` and return what is left to tokenize."""
    parts = word[len(_EMBEDDING) :].strip("\n").split()
    if not parts:
        return ""
    name, rest = parts[0], " ".join(parts[1:])
    log.warning("textual-inversion embeddings are not supported; ignoring embedding:%s", name)
    stripped = name.strip(",")
    if len(stripped) < len(name):
        # ComfyUI retries without commas and then keeps the tail of the name it cut off.
        rest = f"{name[len(stripped) :]} {rest}"
    return rest


class AnimaTokenizer:
    """Both Anima tokenizers plus ComfyUI's weight syntax. Build with `from_dirs`."""

    def __init__(self, qwen, t5) -> None:
        self._qwen = qwen
        self._t5 = t5
        self.qwen_pad_id: int = qwen.token_to_id(QWEN_PAD_TOKEN)
        self.t5_eos_id: int = t5.token_to_id(T5_EOS_TOKEN)

    @classmethod
    def from_dirs(cls, qwen_dir: str | Path, t5_dir: str | Path) -> AnimaTokenizer:
        """`qwen_dir`: vocab.json + merges.txt + tokenizer_config.json; `t5_dir`: tokenizer.json."""
        return cls(_load_qwen(Path(qwen_dir)), _load_t5(Path(t5_dir)))

    def qwen_word_ids(self, text: str) -> list[int]:
        """Qwen ids of one piece of text, no special tokens added."""
        return self._qwen.encode(text, add_special_tokens=False).ids

    def t5_word_ids(self, text: str) -> list[int]:
        """T5 ids of one piece of text, without the ``</s>`` the tokenizer would append."""
        return self._t5.encode(text, add_special_tokens=False).ids

    def tokenize(self, prompt: str) -> TokenizedPrompt:
        """Segment-wise tokenisation of `prompt` (never truncated)."""
        qwen_ids: list[int] = []
        t5_ids: list[int] = []
        t5_weights: list[float] = []
        for segment, weight in parse_prompt_weights(prompt):
            w32 = as_float32(weight)
            for word in _words(segment):
                if word.startswith(_EMBEDDING):
                    word = _without_embedding_name(word)
                    if not word:
                        continue
                qwen_ids += self.qwen_word_ids(word)
                ids = self.t5_word_ids(word)
                t5_ids += ids
                t5_weights += [w32] * len(ids)
        if not qwen_ids:
            qwen_ids = [self.qwen_pad_id]
        t5_ids.append(self.t5_eos_id)
        t5_weights.append(1.0)
        return TokenizedPrompt(qwen_ids=qwen_ids, t5_ids=t5_ids, t5_weights=t5_weights)
