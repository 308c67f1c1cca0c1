"""The DEMO model's two tokenizers, trained on the caption vocabulary, in the real file formats.

- Qwen side: a byte-level BPE written as ``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json``
  (the layout ComfyUI ships for Qwen3), with ``<|endoftext|>`` as an added control token after the
  BPE vocabulary exactly as Qwen places it.
- T5 side: a SentencePiece-Unigram ``tokenizer.json`` with T5's special ids (``<pad>`` 0, ``</s>`` 1,
  ``<unk>`` 2) and a Metaspace pre-tokenizer, fitted by word counts (see `train_t5`).

Both load through `anima.text.tokenize.AnimaTokenizer.from_dirs` unchanged. Every byte / character is in
the base alphabet, so any prompt tokenizes; only the caption words are whole tokens, which keeps the
embedding tables (and so the demo files) small. Training is deterministic for a given corpus.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from anima.text.tokenize import _qwen_pipeline

QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
T5_SPECIALS = ("<pad>", "</s>", "<unk>")


def train_qwen(corpus: Sequence[str], out_dir: str | Path, vocab_size: int = 400) -> Path:
    """Byte-level BPE on `corpus` -> ``out_dir/{vocab.json, merges.txt, tokenizer_config.json}``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers


    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    _qwen_pipeline(tok)  # the very pre-processing the loader will apply
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.model.save(str(out))  # vocab.json + merges.txt
    n = tok.get_vocab_size()
    added = {
        str(n + i): {
            "content": name,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, name in enumerate(QWEN_SPECIALS)
    }
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "model_max_length": 131072,
        "tokenizer_class": "Qwen2Tokenizer",
        "clean_up_tokenization_spaces": False,
        "anima_demo": "tiny demo tokenizer trained on the shapes captions; not the Qwen tokenizer",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out


def train_t5(corpus: Sequence[str], out_dir: str | Path) -> Path:
    """SentencePiece Unigram on `corpus` -> ``out_dir/tokenizer.json`` (T5 special-token ids).

    The unigram model is fitted by counting: every whitespace-separated word (``▁``-prefixed, as
    SentencePiece marks word starts) and its trailing-punctuation split become pieces scored by
    their log relative frequency, and every single character is a low-scored fallback piece. On a
    closed caption vocabulary this is the maximum-likelihood unigram segmentation (one piece per
    known word); the `tokenizers` trainer prunes such a tiny corpus down to characters.
    """
    import math
    import string
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    chars: set[str] = set()
    for line in corpus:
        for word in line.split():
            core = word.rstrip(",.:;!?")
            counts["\u2581" + core] += 1
            counts.update(word[len(core) :])
            chars.update(word)
    total = sum(counts.values())
    pieces = [(name, 0.0) for name in T5_SPECIALS]
    pieces += [(w, math.log(c / total)) for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    floor = math.log(1 / total) - 10.0  # characters only when no word piece fits
    known = {w for w, _ in pieces}
    chars |= set(string.ascii_letters + string.digits + string.punctuation) | {"\u2581"}
    pieces += [(ch, floor) for ch in sorted(chars) if ch not in known]
    tok = Tokenizer(models.Unigram(pieces, unk_id=T5_SPECIALS.index("<unk>"), byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", T5_SPECIALS.index("</s>"))]
    )
    tok.save(str(out / "tokenizer.json"))
    return out


def train_tokenizers(corpus: Sequence[str], out_dir: str | Path) -> tuple[Path, Path]:
    """Both tokenizers into ``out_dir/qwen`` and ``out_dir/t5``; returns the two folders."""
    out = Path(out_dir)
    return train_qwen(corpus, out / "qwen"), train_t5(corpus, out / "t5")
