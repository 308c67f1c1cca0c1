"""ComfyUI weight syntax -> (segment, weight) pieces (spec §3.2, §6)."""

from __future__ import annotations

import struct

import pytest

from anima.text.prompt_weights import as_float32, parse_prompt_weights


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("", []),
        ("plain text, no weights", [("plain text, no weights", 1.0)]),
        ("(x)", [("x", 1.1)]),
        ("((x))", [("x", 1.1 * 1.1)]),
        ("(((x)))", [("x", 1.1 * 1.1 * 1.1)]),
        ("(x:1.3)", [("x", 1.3)]),
        # an explicit weight replaces what the enclosing parentheses built up ...
        ("((x:0.8))", [("x", 0.8)]),
        # ... and parentheses inside it multiply on top of it
        ("(a (b) c:1.5)", [("a ", 1.5), ("b", 1.5 * 1.1), (" c", 1.5)]),
        ("a (b:1.2) c", [("a ", 1.0), ("b", 1.2), (" c", 1.0)]),
        ("(a) (b)", [("a", 1.1), (" ", 1.0), ("b", 1.1)]),
        # square brackets are plain text
        ("[blue hair]", [("[blue hair]", 1.0)]),
        ("([x])", [("[x]", 1.1)]),
    ],
)
def test_weights(prompt: str, expected: list[tuple[str, float]]) -> None:
    assert parse_prompt_weights(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("\\(artist\\)", [("(artist)", 1.0)]),
        ("(a \\) b)", [("a ) b", 1.1)]),
        ("\\((x)\\)", [("(", 1.0), ("x", 1.1), (")", 1.0)]),
        # an escaped parenthesis inside the weight text makes the weight unparsable
        ("(x:1.2\\))", [("x:1.2)", 1.1)]),
        ("a\\b", [("a\\b", 1.0)]),
    ],
)
def test_escapes(prompt: str, expected: list[tuple[str, float]]) -> None:
    assert parse_prompt_weights(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("(x:abc)", [("x:abc", 1.1)]),  # not a number: a plain ( ) group, colon kept
        ("(:1.2)", [(":1.2", 1.1)]),  # a colon at the start does not count
        ("(a:b:1.2)", [("a:b", 1.2)]),  # the last colon wins
        ("(a:1.2:b)", [("a:1.2:b", 1.1)]),
        ("(x: 2 )", [("x", 2.0)]),  # Python float() rules: surrounding spaces are fine
        ("(x:1e-1)", [("x", 0.1)]),
        ("(x:)", [("x:", 1.1)]),
        ("((a):1.2)", [("a", 1.2 * 1.1)]),
    ],
)
def test_explicit_weight_parsing(prompt: str, expected: list[tuple[str, float]]) -> None:
    assert parse_prompt_weights(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a (b", [("a ", 1.0), ("(b", 1.0)]),  # unclosed: plain, keeps its "("
        ("a) (b)", [("a) (b)", 1.0)]),  # a stray ")" drives the depth negative: all plain
        ("(a))(b)", [("a", 1.1), (")(b)", 1.0)]),
        ("()", []),
        ("x()y", [("x", 1.0), ("y", 1.0)]),
    ],
)
def test_unbalanced(prompt: str, expected: list[tuple[str, float]]) -> None:
    assert parse_prompt_weights(prompt) == expected


def test_fixture_mixed_prompt() -> None:
    prompt = "a (red:1.2) ((cat)) sitting on a [mat], (smile), \\(not weighted\\), newline\nsecond line"
    assert parse_prompt_weights(prompt) == [
        ("a ", 1.0),
        ("red", 1.2),
        (" ", 1.0),
        ("cat", 1.1 * 1.1),
        (" sitting on a [mat], ", 1.0),
        ("smile", 1.1),
        (", (not weighted), newline\nsecond line", 1.0),
    ]


def test_float32_weights() -> None:
    ((_, w),) = parse_prompt_weights("((tag))")
    assert w == 1.2100000000000002  # double-precision product, as in the reference
    assert as_float32(w) == f32(1.21)
    assert as_float32(1.3) == f32(1.3) != 1.3
    assert as_float32(1.0) == 1.0
