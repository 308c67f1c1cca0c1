"""Prompt linter and formatter: one test per rule, and idempotence on a corpus of real-looking prompts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from anima.prompt_tools import RULES, ArtistIndex, analyze, format_prompt, insert_tag, lint
from anima.prompt_tools.lint import tag_counts
from anima.prompt_tools.parse import dataset_tag, parse
from anima.prompt_tools.rules import TAG_RULES

CORPUS = Path(__file__).parent / "data" / "prompts_corpus.txt"
ARTISTS = ArtistIndex(["wlop", "ilya kuvshinov", "hammer (sunset beach)", "fkey", "jima"], source="test list")

# code -> (prompt, expected formatted prompt or None when the rule has no automatic fix)
RULE_CASES: dict[str, tuple[str, str | None]] = {
    "F001": ("1girl, Long Hair", "1girl, long hair"),
    "F002": ("1girl, long_hair, score_7", "score_7, 1girl, long hair"),
    "F003": ("1girl,, smile,  ,long   hair,", "1girl, smile, long hair"),
    "F004": ("1girl, serena (pokemon), smile", "1girl, serena \\(pokemon\\), smile"),
    "F005": ("1girl, @ fkey, smile", "1girl, @fkey, smile"),
    "O001": ("smile, 1girl, masterpiece", "masterpiece, 1girl, smile"),
    "U001": ("1girl, smile, smile, Smile", "1girl, smile"),
    "A001": ("1girl, wlop, smile", "1girl, @wlop, smile"),
    "A002": ("1girl, @wlopp, smile", None),
    "W001": ("1girl, (smile:20)", None),
    "W002": ("1girl, (smile:80)", None),
    "L001": ("1girl, " + ", ".join(f"tag{i}" for i in 600 * [0]), None),
    "N001": ("masterpiece, @fkey. A girl in the rain", None),
    "D001": ("masterpiece, ye-pop, a lighthouse", "ye-pop\nmasterpiece, a lighthouse"),
    "D002": ("Ye_Pop\nA lighthouse on a cliff at dusk.", "ye-pop\nA lighthouse on a cliff at dusk."),
    "Q001": ("score 9, score_8_up, 1girl", "score_9, score_8, 1girl"),
    "Y001": ("1girl, year2024, 2019", "year 2024, year 2019, 1girl"),
    "R001": ("1girl, rating:questionable, rating_general", "nsfw, safe, 1girl"),
    "S001": ("safe, explicit, 1girl", None),
    "P001": ("1girl, (smile", None),
}


def _codes(prompt: str, **kw) -> set[str]:
    return {i.code for i in lint(prompt, **kw)}


def test_every_rule_has_a_case() -> None:
    assert set(RULE_CASES) == set(RULES)


@pytest.mark.parametrize("code", sorted(RULE_CASES))
def test_rule(code: str) -> None:
    prompt, expected = RULE_CASES[code]
    kw = {"artists": ARTISTS} if code.startswith("A") else {}
    if code == "L001":
        kw["t5_count"] = lambda p: len(p.split(","))  # a stand-in count; the CLI uses the T5 tokenizer
    issues = [i for i in analyze(prompt, **kw).issues if i.code == code]
    assert issues, f"{code} not reported for {prompt!r}"
    rule = RULES[code]
    for issue in issues:
        assert issue.message and issue.fix == rule.fix and issue.severity == rule.severity
    out = format_prompt(prompt, **({"artists": ARTISTS} if "artists" in kw else {}))
    if expected is None:
        assert not rule.auto
    else:
        assert rule.auto and out == expected
        # After formatting, the rule has nothing left to say.
        assert code not in _codes(out, **kw)


def test_clean_card_prompt_has_no_issues() -> None:
    p = "masterpiece, best quality, score_7, safe, 1girl, hatsune miku, vocaloid, @wlop, long hair, smile"
    assert lint(p, artists=ARTISTS) == []


def test_a002_suggests_the_close_name() -> None:
    (issue,) = [i for i in lint("1girl, @ilya kuvshinof", artists=ARTISTS) if i.code == "A002"]
    assert issue.replacement == "@ilya kuvshinov"


def test_weights_at_the_limits_are_not_flagged() -> None:
    assert not _codes("1girl, (smile:15)") & {"W001", "W002"}
    assert _codes("1girl, (smile:70)") & {"W001", "W002"} == {"W001"}
    # ComfyUI: (x:w) sets the weight, parentheses inside multiply it: 14 * 1.1^2 = 16.94.
    assert "W001" in _codes("1girl, (((smile)):14)")
    assert "W001" not in _codes("1girl, ((((smile:12))))")  # outer parentheses are discarded


def test_n001_counts_sentences_only_for_pure_natural_language() -> None:
    assert "N001" in _codes("An anime girl sits on a bench in the park.")
    assert "N001" not in _codes("An anime girl sits on a bench. She reads a book.")
    assert "N001" not in _codes("1girl, bench, park, A girl sits on a bench.")  # tags carry the content


def test_dataset_header_with_title_is_kept() -> None:
    p = "deviantart\nCyber City\nA neon city at night. Rain falls on the street."
    parsed = parse(p)
    assert parsed.header == ("deviantart", "Cyber City")
    assert format_prompt(p) == p and lint(p) == []


def test_emoticon_underscores_and_escaped_qualifiers_survive() -> None:
    assert format_prompt("1girl, ^_^, o_o, ;_;") == "1girl, ^_^, o_o, ;_;"
    assert format_prompt("1girl, @hammer_(sunset_beach)") == "1girl, @hammer \\(sunset beach\\)"
    assert (
        format_prompt("1girl, hammer (sunset beach)", artists=ARTISTS) == "1girl, @hammer \\(sunset beach\\)"
    )


def test_weight_groups_and_prose_stay_intact() -> None:
    p = "smile, 1girl, (red hair, blue eyes:1.2). A girl stands in the wind, holding a red umbrella."
    assert format_prompt(p) == (
        "1girl, smile, (red hair, blue eyes:1.2). A girl stands in the wind, holding a red umbrella."
    )


def test_prompt_editing_groups_are_one_unit() -> None:
    assert format_prompt("smile, 1girl, [cat ears, fox ears:0.5]") == "1girl, smile, [cat ears, fox ears:0.5]"
    assert format_prompt("Smile, [@A:@B:0.5], 1girl") == "1girl, smile, [@a:@b:0.5]"


def test_insert_tag_goes_to_the_artist_section() -> None:
    assert insert_tag("masterpiece, 1girl, hatsune miku, smile", "@wlop") == (
        "masterpiece, 1girl, hatsune miku, @wlop, smile"
    )
    assert insert_tag("1girl, {artist}, smile", "@x") == "1girl, @x, smile"
    assert insert_tag("A cat on a wall. It sleeps.", "@x") == "@x. A cat on a wall. It sleeps."


def test_tag_rules_are_each_idempotent() -> None:
    samples = ["Long_Hair", "score_7_up", "rating:q", "year2020", "serena (pokemon)", "@ x", "o_o", "A  b"]
    for _, rule in TAG_RULES:
        for s in samples:
            assert rule(rule(s)) == rule(s)


# --------------------------------------------------------------------- corpus
def _corpus() -> list[str]:
    lines = CORPUS.read_text(encoding="utf-8").splitlines()
    return [ln.replace("\\n", "\n") for ln in lines if ln.strip() and not ln.startswith("#")]


def _canonical(prompt: str) -> Counter:
    """Tags after the per-tag rewrites, counted; the reference for 'nothing dropped or invented'."""
    out: Counter = Counter()
    for tag, n in tag_counts(prompt).items():
        for _, rule in TAG_RULES:
            tag = rule(tag)
        out[dataset_tag(tag) or tag] += n
    return out


def test_corpus_is_large_enough() -> None:
    assert len(_corpus()) >= 100


def test_format_is_idempotent_on_the_corpus() -> None:
    for p in _corpus():
        once = format_prompt(p)
        assert format_prompt(once) == once, p
        assert not [i for i in lint(once) if i.auto], p


def test_format_never_drops_or_duplicates_a_tag() -> None:
    for p in _corpus():
        before, after = _canonical(p), _canonical(format_prompt(p))
        assert set(after) == set(before), p
        assert all(n == 1 for n in after.values()), p


def test_format_keeps_the_prose_verbatim() -> None:
    for p in _corpus():
        words_before = " ".join(" ".join(parse(p).prose).split())
        words_after = " ".join(" ".join(parse(format_prompt(p)).prose).split())
        assert words_after == words_before, p


def test_format_on_random_prompts() -> None:
    """Random mixes of tags, case, underscores, weights, duplicates, stray parentheses, separators,
    prose (also glued to a tag) and dataset headers: idempotent, nothing dropped or invented."""
    import random

    rng = random.Random(7)
    vocab = [
        "masterpiece", "best quality", "score_8", "safe", "nsfw", "year 2021", "newest", "absurdres", "1girl",
        "2boys", "no humans", "hatsune miku", "vocaloid", "serena (pokemon)", "@wlop", "@ilya kuvshinov",
        "long hair", "blue eyes", "smile", "looking at viewer", "outdoors", "night", "cherry blossoms",
        "star (symbol)", "^_^", "score 7", "rating:q", "year2020", "ye-pop", "[cat ears, fox ears:0.5]",
        "deviantart", "Hatsune_Miku_(append)", "(a, b:1.2)", "looking at viewer.", "o_o", "@chikuwa.",
        "k-on!", "(smile", "tears)", "\\(o\\)",
    ]  # fmt: skip
    sentences = ["A girl walks in the rain.", "She holds a red umbrella, smiling.", "The city glows.",
                 "a cat sleeps on the warm windowsill today", "Big sky"]  # fmt: skip
    for _ in range(1500):
        tags = []
        for t in rng.sample(vocab, rng.randint(1, 14)):
            if rng.random() < 0.2:
                t = t.upper() if rng.random() < 0.5 else t.replace(" ", "_")
            if rng.random() < 0.15:
                t = f"({t}:{rng.choice([0.8, 1.2, 20])})"
            tags.append(t)
            if rng.random() < 0.1:
                tags.append(t)
        prompt = rng.choice([", ", ",", " , ", ",\n", ",,"]).join(tags)
        if rng.random() < 0.3:
            prompt += rng.choice([". ", ", ", "\n", " "]) + " ".join(rng.sample(sentences, rng.randint(1, 3)))
        if rng.random() < 0.1:
            prompt = rng.choice(["ye-pop\n", "deviantart\nA Title\n", "Ye Pop\n"]) + prompt
        once = format_prompt(prompt)
        assert format_prompt(once) == once, prompt
        before, after = _canonical(prompt), _canonical(once)
        # Exact repeats go; "nsfw" and "(rating:q:0.8)" differ in weight, so both stay.
        assert set(after) == set(before) and all(after[t] <= before[t] for t in after), prompt
