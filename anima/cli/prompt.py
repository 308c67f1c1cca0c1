"""`anima prompt lint|format|artists`: the prompt tools on the command line.

- ``lint PROMPT``: one line per issue (``CODE severity: message (fix: ...)``), or JSON with ``--json``;
  exit status 1 when there is a warning or an error, 0 otherwise (info notes do not fail).
- ``format PROMPT``: the prompt with the automatic fixes applied; ``--quality default`` also adds the
  card's positive prefix and prints the negative prompt on a second line (``Negative prompt: ...``).
- ``artists QUERY --artists FILE``: prefix completions, or near matches for a misspelt name.

PROMPT ``-`` reads the prompt from standard input. The T5 token count (rule L001) needs the
tokenizers: ``--tokenizer-dir`` or the ones ``anima models download`` stored; without them L001 is
skipped, and said so on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from anima.errors import AnimaError


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="prompt_command", required=True)
    for name, text in (("lint", "report prompt issues"), ("format", "apply the automatic fixes")):
        s = sub.add_parser(name, help=text)
        s.add_argument("prompt", help="the prompt ('-' reads standard input)")
        s.add_argument("--artists", type=Path, help="artist list (one name per line or the 59k index)")
        s.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "lint":
            s.add_argument("--tokenizer-dir", type=Path, help="folder with qwen/ and t5/ (for L001)")
        else:
            s.add_argument("--quality", choices=["default", "none", "custom"], default="none")
            s.add_argument("--quality-prefix", help="positive prefix for --quality custom")
            s.add_argument("--quality-negative", help="negative prompt for --quality custom")
            s.add_argument("--negative-prompt", "-n", help="negative prompt to merge with the preset's")
    a = sub.add_parser("artists", help="complete or correct an artist name from an artist list")
    a.add_argument("query", help="the start of a name, or a misspelt name")
    a.add_argument("--artists", type=Path, required=True, help="artist list file")
    a.add_argument("--limit", type=int, default=10)


def _read_prompt(text: str) -> str:
    return sys.stdin.read().rstrip("\n") if text == "-" else text


def _t5_counter(tokenizer_dir: Path | None):
    import os

    from anima.weights.discovery import default_data_dir, find_tokenizers

    qwen, t5 = find_tokenizers(
        tokenizer_dir=tokenizer_dir, data_dir=default_data_dir(os.environ, Path.home())
    )
    if qwen is None or t5 is None:
        print("anima: note: no tokenizers found, so the 512-token check (L001) was skipped", file=sys.stderr)
        return None
    from anima.text.tokenize import AnimaTokenizer

    tok = AnimaTokenizer.from_dirs(qwen, t5)
    return lambda prompt: len(tok.tokenize(prompt).t5_ids)


def run_prompt(args: argparse.Namespace) -> int:
    from anima.prompt_tools import ArtistIndex, analyze, apply_quality, quality_preset

    cmd = args.prompt_command
    artists = ArtistIndex.load(args.artists) if args.artists else None
    if cmd == "artists":
        if args.limit < 1:
            raise AnimaError("--limit must be at least 1")
        names = artists.complete(args.query, args.limit) or artists.suggest(args.query, args.limit)
        for n in names:
            print(f"@{n}")
        return 0 if names else 1
    prompt = _read_prompt(args.prompt)
    if cmd == "lint":
        result = analyze(prompt, artists=artists, t5_count=_t5_counter(args.tokenizer_dir))
        if args.json:
            print(json.dumps([i.to_dict() for i in result.issues], ensure_ascii=False, indent=1))
        else:
            for issue in result.issues:
                print(issue)
        return 1 if any(i.severity in ("warning", "error") for i in result.issues) else 0
    formatted = analyze(prompt, artists=artists).formatted
    negative = args.negative_prompt
    if args.quality != "none":
        preset = quality_preset(args.quality, args.quality_prefix, args.quality_negative)
        formatted, negative = apply_quality(formatted, negative, preset)
        formatted = analyze(formatted, artists=artists).formatted
    if args.json:
        print(json.dumps({"prompt": formatted, "negative_prompt": negative}, ensure_ascii=False))
    else:
        print(formatted)
        if negative is not None:
            print(f"Negative prompt: {negative}")
    return 0
