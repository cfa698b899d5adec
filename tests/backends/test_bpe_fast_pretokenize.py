"""bpe_fast's pre-tokenizer (backends/bpe_fast/_pretokenize.py) against the reference's: the
narrowed ASCII patterns on stdlib ``re``, and the cuts of mixed text at line-feed boundaries.
The conformance suite checks whole encodings; these tests aim at the cuts themselves."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmspec.backends.bpe_fast import _pretokenize as P
from lmspec.reference.tokenizer import pretokenize
from lmspec.spec.tokenizer import NASTY_TEXTS, PRESETS

NAMES = sorted(PRESETS)
# one character of each kind the presets tell apart, ASCII only
ASCII_KINDS = "aZs'0 \t\n\r\x0b./)_-"
# what the cuts hinge on: line feeds before spaces, "/", letters; non-ASCII letters, digits,
# spaces and line breaks; punctuation before line feeds
FRAGMENTS = ("\n", "\n  ", "\n\t", "\r\n", " ", "  ", "/", ")", "x", "Ab", "'s", "12", "é",
             "日本", "٣", "\u3000", "\xa0", "\u2028", "\x85", "e\u0301", "\n/", ".\n", "  \n")


@pytest.mark.parametrize("name", NAMES)
def test_every_ascii_character_is_classed_as_regex_classes_it(name):
    pattern = PRESETS[name].pattern
    narrow = re.compile(P.ascii_pattern(pattern), re.ASCII)
    for c in map(chr, range(128)):
        for text in (c, c * 3, f"a{c}", f"{c} x", f"{c}\n"):
            assert narrow.findall(text) == pretokenize(text, pattern), (name, text)


@pytest.mark.parametrize("name", NAMES)
def test_narrowed_pattern_equals_the_original_on_all_short_ascii_strings(name):
    pattern = PRESETS[name].pattern
    narrow = re.compile(P.ascii_pattern(pattern), re.ASCII)
    for n in range(1, 5):
        for chars in itertools.product(ASCII_KINDS, repeat=n):
            text = "".join(chars)
            assert narrow.findall(text) == pretokenize(text, pattern), (name, text)


@pytest.mark.parametrize("name", NAMES)
def test_split_equals_the_reference_on_nasty_text(name):
    split, pattern = P.splitter(PRESETS[name].pattern), PRESETS[name].pattern
    for text in [*NASTY_TEXTS, "".join(NASTY_TEXTS), "\n".join(NASTY_TEXTS),
                 "é)\n/x\n  /y\n/", "x\n   \n/é", "a\n\n  b é \n c", "é\n\t\tx\r\n/ \n"]:
        assert split(text) == pretokenize(text, pattern), (name, text)


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(name=st.sampled_from(NAMES),
       parts=st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=3), max_size=16))
def test_split_equals_the_reference(name, parts):
    text = "".join(parts)
    pattern = PRESETS[name].pattern
    assert P.splitter(pattern)(text) == pretokenize(text, pattern)


def test_narrowing_reads_classes_as_regex_does():
    """Properties inside and outside classes, negated classes, a leading ']' and escapes."""
    for pattern, text in [(r"[]\p{N}]+|\p{L}+|[^\p{L}\p{N}\]]+", "]12x ab-?]]"),
                          (r"[^]\p{L}]+|\p{Lu}\p{Ll}*|.", "Abc]1 2DE]"),
                          (r"\[\p{L}\]|\p{N}|\S|\s", "[a]1[b]x \t")]:
        narrow = re.compile(P.ascii_pattern(pattern), re.ASCII)
        assert narrow.findall(text) == pretokenize(text, pattern), (pattern, text)


def test_other_patterns_run_on_regex_as_given():
    assert P.splitter(r"\S+|\s+")("a b") == ["a", " ", "b"]
    assert r"\S+|\s+" not in P.BOUNDARIES


@pytest.mark.parametrize("name, wrong", [("o200k_base", "cl100k_base"), ("gpt2", "cl100k_base")])
def test_a_wrong_boundary_is_caught(monkeypatch, name, wrong):
    """The checks above can fail: o200k's punctuation takes a "/" after a line feed, and gpt2
    gives the spaces after a line feed to the line feed, so cl100k's cuts are wrong for them."""
    pattern = PRESETS[name].pattern
    monkeypatch.setitem(P.BOUNDARIES, pattern, P.BOUNDARIES[PRESETS[wrong].pattern])
    texts = ["é)\n/x", "é\n  x"]
    assert any(P.splitter(pattern)(t) != pretokenize(t, pattern) for t in texts)
