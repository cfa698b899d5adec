"""Conformance of bpe_train: exactly the reference's merges, ranks and specials (the merge rule
and its tie-break, spec/bpe_train.py), the id policy, and error inputs. Dtype-free."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given

from lmspec import reference as R
from lmspec.conformance import _check as check
from lmspec.conformance import _results
from lmspec.spec.bpe_train import COMPONENT, GPT2_LIKE
from lmspec.spec.tokenizer import NASTY_TEXTS

DTYPE_FREE = True
STEM = COMPONENT.stem

# a small real corpus (prose, code, digits, CJK): ties and long merge chains
CORPUS = [*NASTY_TEXTS,
          "It was the best of times, it was the worst of times, it was the age of wisdom, "
          "it was the age of foolishness, it was the epoch of belief.\n" * 2,
          "for i in range(10):\n    total += i * i  # squares\nprint(total)\n" * 3,
          "東京都 東京タワー 京都 1999 2000 2001 20000"]


def train(target, **params):
    check.require_impl(target, STEM)
    try:
        return target.backend.fn(STEM)(**params)
    except NotImplementedError as e:
        _results.record_unsupported(STEM, target, "train", str(e))
        pytest.skip(f"unsupported: {e}")


@cache
def reference_model(vocab_size: int, pattern: str):
    return R.bpe_train(CORPUS, vocab_size=vocab_size, pattern=pattern,
                       special_tokens=("<|endoftext|>",))


def compare(target, got, want, params: dict) -> None:
    _results.record_check(STEM, target, "merges", "merges", None)
    where = f"bpe_train [{target.backend.name}] on {str(params)[:300]}"
    for what in ("merges", "ranks", "special_tokens", "pattern"):
        g, w = getattr(got, what), getattr(want, what)
        if what == "merges":
            g, w = list(map(tuple, g)), list(w)
            k = next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), None)
            if k is not None or len(g) != len(w):
                k = min(len(g), len(w)) if k is None else k
                pytest.fail(f"\n{where}\n  merges differ first at merge {k}: got "
                            f"{g[k:k + 3]}, spec {w[k:k + 3]} ({len(g)} vs {len(w)} merges)",
                            pytrace=False)
        elif (g if what == "pattern" else dict(g)) != w:
            pytest.fail(f"\n{where}\n  {what} differ", pytrace=False)


@given(case=COMPONENT.cases())
def test_merges_equal_the_reference(target, case):
    """Small corpora over a small alphabet: many ties at the top count."""
    got = train(target, **case.params)
    compare(target, got, R.bpe_train(**case.params), case.params)


# "groups": a pattern with capture groups, whose pieces are still the whole matches
@pytest.mark.parametrize("pattern", (GPT2_LIKE, r"\S+|\s+", r"( ?)(\p{L}+)|\S|\s"),
                         ids=("gpt2_like", "spaces", "groups"))
def test_merges_equal_the_reference_on_a_real_corpus(target, pattern):
    params = dict(texts=CORPUS, vocab_size=420, pattern=pattern,
                  special_tokens=("<|endoftext|>",))
    compare(target, train(target, **params), reference_model(420, pattern), params)


def test_id_policy(target):
    """Byte b has id b; merged tokens take 256, 257, ... in order; specials follow; the
    vocabulary is exactly vocab_size unless the corpus runs out of pairs."""
    model = train(target, texts=CORPUS, vocab_size=300, pattern=GPT2_LIKE,
                  special_tokens=("<|a|>", "<|b|>"))
    _results.record_check(STEM, target, "id_policy", "ranks", None)
    assert all(model.ranks[bytes([b])] == b for b in range(256))
    assert sorted(model.ranks.values()) == list(range(len(model.ranks)))
    assert model.special_tokens == {"<|a|>": len(model.ranks), "<|b|>": len(model.ranks) + 1}
    assert len(model.ranks) + 2 == 300
    # merge i has id 256 + i: no merge spells an existing token (spec step 3)
    assert [model.ranks[a + b] for a, b in model.merges] == list(
        range(256, 256 + len(model.merges)))
    tiny = train(target, texts=["ab ab"], vocab_size=300, pattern=GPT2_LIKE)
    assert [tuple(m) for m in tiny.merges] == [(b"a", b"b"), (b" ", b"ab")], tiny.merges
    assert len(tiny.ranks) == 258  # ran out of pairs: smaller than asked
    # runs of 'a' (hand-checked in tests/reference/test_ref_bpe_train.py::test_runs_of_a_golden,
    # unique top counts): left-to-right overlaps, and 'aaaa' is never re-spelled a + aaa
    runs = train(target, texts=["aaaaaaa", *["aaa"] * 3, "aaaa"], vocab_size=300,
                 pattern=GPT2_LIKE)
    assert [tuple(m) for m in runs.merges] == [
        (b"a", b"a"), (b"aa", b"a"), (b"aa", b"aa"), (b"aaaa", b"aaa")], runs.merges
    assert {t: i for t, i in runs.ranks.items() if i >= 256} == {
        b"aa": 256, b"aaa": 257, b"aaaa": 258, b"a" * 7: 259}, runs.ranks


@pytest.mark.parametrize("pattern", (r"(?s).+", r"\S+|\s+"), ids=("one_piece", "spaces"))
def test_special_tokens_never_merge(target, pattern):
    """Special-token text in the corpus is a special, never counted as text (the second
    pattern is one every regex engine compiles)."""
    model = train(target, texts=["<|e|><|e|><|e|> x<|e|>x"], vocab_size=270,
                  pattern=pattern, special_tokens=("<|e|>",))
    _results.record_check(STEM, target, "specials", "ranks", None)
    assert all(b"<|" not in t and b"|>" not in t for t in model.ranks if len(t) > 1), \
        sorted(t for t in model.ranks if len(t) > 1)


def test_errors(target):
    check.check_errors(target, STEM, lambda params: target.backend.fn(STEM)(**params))
