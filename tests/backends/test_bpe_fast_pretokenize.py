"""bpe_fast's pre-tokenizer (backends/bpe_fast/_pretokenize.py) against the reference's: the
narrowed ASCII patterns on stdlib ``re``, the compiled core's hand-written scanners of the
presets (_core.c's split), and the cuts of mixed text at line-feed boundaries. The conformance
suite checks whole encodings; these tests aim at the split itself."""

from __future__ import annotations

import importlib
import itertools
import re

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from lmspec.backends.bpe_fast import _pretokenize as P
from lmspec.reference.tokenizer import pretokenize
from lmspec.spec.tokenizer import NASTY_TEXTS, PRESETS

try:
    _core = importlib.import_module("lmspec.backends.bpe_fast._core")
except ImportError:  # built without a C compiler: only the re path exists
    _core = None
# the ASCII stretches go to stdlib re (None) or to the compiled scanners
CORES = [pytest.param(None, id="re"),
         pytest.param(_core, id="c", marks=pytest.mark.skipif(_core is None,
                                                               reason="no compiled core"))]
needs_core = pytest.mark.skipif(_core is None, reason="bpe_fast's compiled core was not built")

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


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("name", NAMES)
def test_split_equals_the_reference_on_nasty_text(name, core):
    split, pattern = P.splitter(PRESETS[name].pattern, core), PRESETS[name].pattern
    for text in [*NASTY_TEXTS, "".join(NASTY_TEXTS), "\n".join(NASTY_TEXTS),
                 "é)\n/x\n  /y\n/", "x\n   \n/é", "a\n\n  b é \n c", "é\n\t\tx\r\n/ \n"]:
        assert split(text) == pretokenize(text, pattern), (name, text)


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(name=st.sampled_from(NAMES), core=st.sampled_from([None, _core] if _core else [None]),
       parts=st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=3), max_size=16))
def test_split_equals_the_reference(name, core, parts):
    text = "".join(parts)
    pattern = PRESETS[name].pattern
    assert P.splitter(pattern, core)(text) == pretokenize(text, pattern)


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


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("name, wrong", [("o200k_base", "cl100k_base"), ("gpt2", "cl100k_base")])
def test_a_wrong_boundary_is_caught(monkeypatch, name, wrong, core):
    """The checks above can fail: o200k's punctuation takes a "/" after a line feed, and gpt2
    gives the spaces after a line feed to the line feed, so cl100k's cuts are wrong for them."""
    pattern = PRESETS[name].pattern
    monkeypatch.setitem(P.BOUNDARIES, pattern, P.BOUNDARIES[PRESETS[wrong].pattern])
    texts = ["é)\n/x", "é\n  x"]
    assert any(P.splitter(pattern, core)(t) != pretokenize(t, pattern) for t in texts)


# what the scanners branch on: an apostrophe and the letters of every contraction in both
# cases, another lower and upper letter, a digit, each ASCII space, "/" (o200k's punctuation
# takes it after line feeds), other punctuation, a control character
SCAN_KINDS = "'sSlLvVeErRtaZ0 \t\n\r\x0b\x0c/._\x00"


@needs_core
@pytest.mark.parametrize("name", NAMES)
def test_scanners_equal_the_reference_on_all_short_ascii_strings(name):
    pattern, preset = PRESETS[name].pattern, P.SCANNERS[PRESETS[name].pattern]
    for n in range(1, 5):
        for chars in itertools.product(SCAN_KINDS, repeat=n):
            text = "".join(chars)
            assert _core.split(text, preset) == pretokenize(text, pattern), (name, text)


@needs_core
@pytest.mark.parametrize("name", NAMES)
def test_scanners_equal_the_reference_on_python_sources(name):
    from lmspec.conformance._tokenizer_cli import stdlib_corpus

    text = "".join(stdlib_corpus(1 << 20)).encode("ascii", "ignore").decode()
    pattern, preset = PRESETS[name].pattern, P.SCANNERS[PRESETS[name].pattern]
    assert _core.split(text, preset) == pretokenize(text, pattern)


@needs_core
@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(name=st.sampled_from(NAMES), text=st.text(st.sampled_from(SCAN_KINDS), max_size=40),
       bounds=st.tuples(st.integers(0, 40), st.integers(0, 40)).map(sorted),
       stop=st.integers(0, 45))
def test_scanners_end_text_at_endpos_as_findall_does(name, text, bounds, stop):
    """pos and endpos as re's findall reads them: ``$`` and the look-aheads see endpos as the
    end, which the cuts of mixed text rely on; stop keeps the pieces that start before it."""
    pos, endpos = min(bounds[0], len(text)), bounds[1]
    pattern, preset = PRESETS[name].pattern, P.SCANNERS[PRESETS[name].pattern]
    want = regex.compile(pattern).findall(text, pos, endpos)
    assert _core.split(text, preset, pos, endpos) == want
    starts = itertools.accumulate([pos] + [len(p) for p in want])
    assert _core.split(text, preset, pos, endpos, stop) == \
        [p for p, start in zip(want, starts) if start < stop]
    # a wider str (here with a non-ASCII character outside the range) scans the same
    wide = text + "日"
    assert _core.split(wide, preset, pos, min(endpos, len(text))) == \
        regex.compile(pattern).findall(wide, pos, min(endpos, len(text)))


@needs_core
def test_scanner_arguments_are_checked():
    with pytest.raises(ValueError, match="text: expected ASCII"):
        _core.split("ab é", 1)
    with pytest.raises(ValueError, match="text: expected ASCII"):
        _core.split("ab\xe9", 1)  # one byte a character, not ASCII
    assert _core.split("ab é", 1, 0, 3) == ["ab", " "]
    with pytest.raises(ValueError, match="preset: expected 0 to 2"):
        _core.split("ab", 3)
    with pytest.raises(ValueError, match="pos: expected 0 to 2"):
        _core.split("ab", 1, 3)
    with pytest.raises(ValueError, match="endpos: expected >= 0"):
        _core.split("ab", 1, 0, -5)
    assert _core.split("abc d", 1, 1, 5, -(1 << 63)) == []  # a stop before pos: no piece
    assert _core.split("abc d", 1, 1, 5, 1 << 62) == ["bc", " d"]
    with pytest.raises(TypeError):
        _core.split(b"ab", 1)
