"""Artist index (formats, normalisation, suggestions, completion), presets, and `anima prompt`."""

from __future__ import annotations

import json
import random
import string
import time
from pathlib import Path

import pytest
from conftest import TOKENIZERS

from anima.cli import main
from anima.errors import AnimaError
from anima.prompt_tools import ArtistIndex, apply_quality, normalize_name, prompt_tag, quality_preset
from anima.prompt_tools.presets import (
    CARD_NEGATIVE,
    CARD_POSITIVE_PREFIX,
    period_tag,
    rating_negative,
    rating_tag,
    year_tag,
)

# The layout of the community style explorer's index file: a prose header, a banner between two
# rules of "=", then one @name per line with ComfyUI-escaped parentheses, most trained first.
EXPLORER_INDEX = """# ==========================================
# 1,234 Danbooru Artist List (test snapshot)
# ==========================================

This index lists artist tags. Lines like this one are prose, not names.

- FREQUENCY SORTED: most samples first.

==========================================
ARTIST LIST STARTS BELOW:
==========================================
@dairi
@hammer \\(sunset beach\\)
@ilya kuvshinov
@kantoku
@kani biimu
@e.o.
@qp:flapper
"""


def test_explorer_index_format(tmp_path: Path) -> None:
    f = tmp_path / "Anima2B_Artist_Index.txt"
    f.write_text(EXPLORER_INDEX, encoding="utf-8")
    idx = ArtistIndex.load(f)
    assert idx.names == [
        "dairi", "hammer (sunset beach)", "ilya kuvshinov", "kantoku", "kani biimu", "e.o.", "qp:flapper",
    ]  # fmt: skip
    assert idx.rank("@Hammer_(sunset_beach)") == 1
    assert "@ILYA_KUVSHINOV" in idx and "nobody" not in idx


def test_plain_and_csv_lists(tmp_path: Path) -> None:
    plain = tmp_path / "a.txt"
    plain.write_text("# my list\nwlop\n\n@Ilya_Kuvshinov\nwlop\n", encoding="utf-8")
    assert ArtistIndex.load(plain).names == ["wlop", "ilya kuvshinov"]
    csv = tmp_path / "danbooru.csv"
    csv.write_text("1girl,0,6000000,\nwlop,1,3000,\nhatsune_miku,4,100000,\nkantoku,1,2500,\n")
    assert ArtistIndex.load(csv).names == ["wlop", "kantoku"]


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "not found"), ("", "no artist names"), ("# only a comment\n", "no artist names")],
)
def test_bad_artist_files(tmp_path: Path, content: str | None, message: str) -> None:
    f = tmp_path / "artists.txt"
    if content is not None:
        f.write_text(content)
    with pytest.raises(AnimaError, match=message):
        ArtistIndex.load(f)


def test_normalisation_and_prompt_tag() -> None:
    assert normalize_name("  @Hammer_\\(Sunset  Beach\\) ") == "hammer (sunset beach)"
    assert prompt_tag("hammer (sunset beach)") == "@hammer \\(sunset beach\\)"


def test_suggest_and_complete() -> None:
    idx = ArtistIndex(["ilya kuvshinov", "kantoku", "kani biimu", "kanon (kurogane knights)", "wlop"])
    assert idx.suggest("ilya kuvshinof") == ["ilya kuvshinov"]
    assert idx.suggest("@Kantok") == ["kantoku"]
    assert idx.suggest("zzzzzz") == []
    assert idx.complete("kan") == ["kantoku", "kani biimu", "kanon (kurogane knights)"]
    assert idx.complete("kuvsh") == ["ilya kuvshinov"]  # a later word of the name
    assert idx.complete("kan", limit=1) == ["kantoku"]


def test_large_index_lookups() -> None:
    rng = random.Random(0)
    names = [
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 9))) + f" {i}" for i in range(60000)
    ]
    t0 = time.perf_counter()
    idx = ArtistIndex(names)
    t1 = time.perf_counter()
    target = names[31337]
    typo = target[:2] + target[3:]
    assert target in idx.suggest(typo)
    t2 = time.perf_counter()
    assert idx.complete(target[:5])[0].startswith(target[:5])
    t3 = time.perf_counter()
    print(f"60k names: build {t1 - t0:.2f}s, first suggest {t2 - t1:.2f}s, complete {t3 - t2:.4f}s")


# --------------------------------------------------------------------- presets
def test_quality_presets() -> None:
    p, n = apply_quality("1girl, smile", None, quality_preset("default"))
    assert p == CARD_POSITIVE_PREFIX + ", 1girl, smile" and n == CARD_NEGATIVE
    p, n = apply_quality("masterpiece, 1girl", "blurry", quality_preset("default"))
    assert p == "best quality, score_7, safe, masterpiece, 1girl"  # no second masterpiece
    assert n == CARD_NEGATIVE + ", blurry"
    assert apply_quality("1girl", "x", quality_preset("none")) == ("1girl", "x")
    p, n = apply_quality("ye-pop\nA lighthouse at dusk. Waves below.", None, quality_preset("default"))
    assert p.startswith("ye-pop\n" + CARD_POSITIVE_PREFIX)
    p, n = apply_quality("1girl", None, quality_preset("custom", "score_9", "lowres"))
    assert (p, n) == ("score_9, 1girl", "lowres")
    with pytest.raises(AnimaError, match="custom quality preset needs"):
        quality_preset("custom")
    with pytest.raises(AnimaError, match="unknown quality preset"):
        quality_preset("best")


def test_year_and_rating_helpers() -> None:
    assert year_tag(2024) == "year 2024"
    assert [period_tag(y) for y in (2025, 2019, 2015, 2012, 2005)] == [
        "newest",
        "recent",
        "mid",
        "early",
        "old",
    ]
    with pytest.raises(AnimaError):
        year_tag(24)
    assert [rating_tag(r) for r in ("general", "g", "questionable", "q", "e", "sensitive")] == [
        "safe", "safe", "nsfw", "nsfw", "explicit", "sensitive",
    ]  # fmt: skip
    assert rating_negative("safe") == "sensitive, nsfw, explicit"
    assert rating_negative("explicit") == ""
    with pytest.raises(AnimaError, match="unknown rating"):
        rating_tag("pg-13")


# --------------------------------------------------------------------- CLI
def test_cli_lint_and_format(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["prompt", "lint", "masterpiece, 1girl, smile"]) == 0
    assert main(["prompt", "lint", "Smile, 1girl", "--json"]) == 1
    codes = {i["code"] for i in json.loads(capsys.readouterr().out)}
    assert codes == {"F001", "O001"}
    assert main(["prompt", "format", "Smile, 1girl", "--quality", "default"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [CARD_POSITIVE_PREFIX + ", 1girl, smile", "Negative prompt: " + CARD_NEGATIVE]
    artists = tmp_path / "a.txt"
    artists.write_text("wlop\nwlsomething\n")
    assert main(["prompt", "format", "1girl, wlop", "--artists", str(artists)]) == 0
    assert capsys.readouterr().out.strip() == "1girl, @wlop"
    assert main(["prompt", "artists", "wl", "--artists", str(artists)]) == 0
    assert capsys.readouterr().out.split() == ["@wlop", "@wlsomething"]


def test_cli_lint_counts_t5_tokens(capsys: pytest.CaptureFixture) -> None:
    long = ", ".join(f"tag number {i}" for i in range(200))
    assert main(["prompt", "lint", long, "--tokenizer-dir", str(TOKENIZERS)]) == 1
    assert "L001" in capsys.readouterr().out


def test_cli_missing_artist_file(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["prompt", "lint", "1girl", "--artists", str(tmp_path / "nope.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.txt not found" in err
