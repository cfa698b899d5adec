"""bpe_train reference vs a hand-derived example (Wikipedia's 'aaabdaaabac'), rustbpe (same rule,
same tie-break) and HF tokenizers' BpeTrainer (same rule; its own tie-break, so compared up to
the first tie)."""

from __future__ import annotations

import importlib
import itertools
import json

import pytest

from lmspec import reference as R
from lmspec.spec.bpe_train import COMPONENT, GPT2_LIKE
from lmspec.spec.tokenizer import NASTY_TEXTS, PRESETS

train_ref = importlib.import_module("lmspec.reference.bpe_train")
formats = importlib.import_module("lmspec.reference._bpe_formats")

CORPUS = [*NASTY_TEXTS,
          "the cat sat on the mat; the hat is on the cat. aaa aaaa abab baba\n" * 3,
          "def f(x):\n    return x + 1  # 123 4567\n" * 2]


def test_wikipedia_aaabdaaabac():
    """One word (identity pre-tokenization). Counts by hand: aa 4 (two in each 'aaa'), ab 2,
    bd 1, da 1, ba 1, ac 1 -> Z = aa. Then 'Z a b d Z a b a c': (Z, a) 2 and (a, b) 2 tie;
    (97, 98) < (256, 97) -> Y = ab. Then 'Z Y d Z Y a c': (Z, Y) 2 -> X = ZY = aaab. Every
    remaining pair has count 1; Wikipedia stops there (vocab_size 259)."""
    model = R.bpe_train(["aaabdaaabac"], vocab_size=259, pattern=r"(?s).+")
    assert model.merges == [(b"a", b"a"), (b"a", b"b"), (b"aa", b"ab")]
    assert {t: i for t, i in model.ranks.items() if i >= 256} == {
        b"aa": 256, b"ab": 257, b"aaab": 258}
    tok = R.tokenizer(model.ranks, pattern=model.pattern)
    assert tok.encode("aaabdaaabac") == [258, ord("d"), 258, ord("a"), ord("c")]


def test_counts_overlaps_and_merges_left_to_right():
    words = {(97, 97, 97): 1}
    assert train_ref.pair_counts(words) == {(97, 97): 2}
    assert train_ref.merge_word((97, 97, 97), (97, 97), 256) == (256, 97)
    assert train_ref.merge_word((97, 97, 97, 97), (97, 97), 256) == (256, 256)


def _ties(texts, vocab_size, pattern) -> tuple[int, list[int]]:
    """(merges made before the first tie at the top count, the steps with a tie)."""
    words = {tuple(w): n for w, n in train_ref.words_of(texts, pattern, ()).items()}
    first, tied, next_id = None, [], 256
    for step in range(vocab_size - 256):
        counts = train_ref.pair_counts(words)
        if not counts:
            break
        top = max(counts.values())
        if sum(c == top for c in counts.values()) > 1:
            tied.append(step)
            first = step if first is None else first
        pair = min(counts, key=lambda p: (-counts[p], p))
        words = {train_ref.merge_word(w, pair, next_id): n for w, n in words.items()}
        next_id += 1
    return (step if first is None else first), tied


@pytest.mark.parametrize("pattern", (GPT2_LIKE, PRESETS["cl100k_base"].pattern),
                         ids=("gpt2_like", "cl100k"))
@pytest.mark.parametrize("vocab_size", (300, 400))
def test_rustbpe_makes_the_same_merges(pattern, vocab_size):
    """rustbpe (nanochat): highest count, ties to the smallest (left id, right id), new ids
    256 + i: the spec's rule exactly, ties included (the corpus has many)."""
    rustbpe = pytest.importorskip("rustbpe")
    _, tied = _ties(CORPUS, vocab_size, pattern)
    assert len(tied) > 5  # the tie-break is exercised
    theirs = rustbpe.Tokenizer()
    theirs.train_from_iterator(iter(CORPUS), vocab_size, pattern=pattern)
    ranks = {bytes(t): i for t, i in theirs.get_mergeable_ranks()}
    model = R.bpe_train(CORPUS, vocab_size=vocab_size, pattern=pattern)
    assert len(model.ranks) == 256 + len(model.merges)  # never a reuse (spec step 3)
    assert ranks == model.ranks


def _hf_merges(corpus: list[str], vocab_size: int) -> list[tuple[bytes, bytes]]:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import pre_tokenizers

    hf = tokenizers.Tokenizer(tokenizers.models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(GPT2_LIKE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(corpus, trainer)
    back = formats.unicode_to_bytes()
    return [tuple(bytes(back[c] for c in part) for part in m)
            for m in json.loads(hf.to_str())["model"]["merges"]]


def test_hf_bpe_trainer_agrees_where_the_top_count_is_unique():
    """HF's BpeTrainer counts the same way but breaks ties by its own ids (initial characters
    numbered in the order of their byte-level stand-ins: 'Ġ' for a space sorts after the
    letters). Corpus 1: no tie in the first 13 merges, and HF resolves the later ties as the
    spec does: equal throughout. Corpus 2: the lists part at a tied step (merge 4: the
    spec's (32, 'the' = 259) < (97, 98); HF's 'a', 'b' ids are smaller than its 'Ġ')."""
    # word frequencies found by a search for a late first tie
    freqs = (("sat", 22), ("in", 25), ("hat", 17), ("as", 28), ("an", 15), ("that", 34),
             ("this", 3), ("tin", 19))
    corpus = [" ".join(w for w, n in freqs for _ in range(n))]
    k, _ = _ties(corpus, 300, GPT2_LIKE)
    assert k == 13
    assert _hf_merges(corpus, 300) == R.bpe_train(corpus, vocab_size=300,
                                                  pattern=GPT2_LIKE).merges
    corpus = ["the cat sat on the mat; the hat is on the cat. aaa aaaa abab baba\n"]
    theirs, ours = _hf_merges(corpus, 300), R.bpe_train(corpus, vocab_size=300,
                                                        pattern=GPT2_LIKE).merges
    first = next(i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b)
    assert first in _ties(corpus, 300, GPT2_LIKE)[1], first
    assert (first, ours[first], theirs[first]) == (4, (b" ", b"the"), (b"a", b"b"))


def test_special_tokens_ids_and_exclusion():
    model = R.bpe_train(["x<|e|>y<|e|>xy xy"], vocab_size=262, pattern=GPT2_LIKE,
                        special_tokens=("<|e|>", "<|f|>"))
    assert model.special_tokens == {"<|e|>": len(model.ranks), "<|f|>": len(model.ranks) + 1}
    assert len(model.ranks) + 2 <= 262
    assert all(b"<" not in t for t in model.ranks if len(t) > 1)


def test_stops_when_no_pair_is_left():
    model = R.bpe_train(["ab"], vocab_size=1000, pattern=r"(?s).+")
    assert model.merges == [(b"a", b"b")] and len(model.ranks) == 257


def test_trained_vocabulary_tokens_encode_to_themselves():
    """BPE by rank (without the whole-piece shortcut) reaches every trained token."""
    merge_parts = importlib.import_module("lmspec.reference.tokenizer").merge_parts
    model = R.bpe_train(CORPUS, vocab_size=400, pattern=GPT2_LIKE)
    bad = [t for t, i in model.ranks.items()
           if [model.ranks[p] for p in merge_parts(t, model.ranks)] != [i]]
    assert not bad, bad[:5]


def test_error_inputs():
    for err in COMPONENT.errors:
        _, params = err.build()
        with pytest.raises(err.exception, match=err.match):
            R.bpe_train(**params)


# ------------------------------------------------------------------ the id policy: no reuse

RUNS = ["aaaaaaa", *["aaa"] * 3, "aaaa"]  # words a^7 (weight 1), a^3 (3), a^4 (1)


def test_runs_of_a_golden():
    """Hand-checked, every top count unique. Words a^7, a^3 x3, a^4.
    0: (a, a) counts 6 + 3*2 + 3 = 15 -> aa = 256; a^7 = aa aa aa a, a^3 = aa a, a^4 = aa aa.
    1: (256, 256) 2 + 1 = 3, (256, a) 1 + 3 = 4 -> aaa = 257; a^7 = aa aa aaa, a^3 = aaa.
    2: (256, 256) 1 + 1 = 2, (256, 257) 1 -> aaaa = 258; a^7 = aaaa aaa, a^4 = aaaa.
    3: (258, 257) 1 -> a^7 = 259; every word is one token: stop at 260 of the 300 asked.
    Near misses of a reuse: 'aaaa' could be spelled a + aaa or aaa + a, and a^7 aaa + aaaa,
    but those splits never stand alone in a word (a single 'a' survives step 0 only at the
    end of an odd run, and step 1 takes it); so merge i is id 256 + i (spec step 3). The
    reference, bpe_fast, rustbpe and HF's BpeTrainer (unique tops: its tie-break is moot)
    all make these merges."""
    want = [(b"a", b"a"), (b"aa", b"a"), (b"aa", b"aa"), (b"aaaa", b"aaa")]
    ids = {b"aa": 256, b"aaa": 257, b"aaaa": 258, b"a" * 7: 259}
    fast = importlib.import_module("lmspec.backends.bpe_fast.bpe_train")
    for train in (R.bpe_train, fast.bpe_train):
        model = train(RUNS, vocab_size=300, pattern=GPT2_LIKE)
        assert list(map(tuple, model.merges)) == want, train.__module__
        assert {t: i for t, i in model.ranks.items() if i >= 256} == ids, train.__module__
    assert _hf_merges(RUNS, 260) == want
    rustbpe = pytest.importorskip("rustbpe")
    theirs = rustbpe.Tokenizer()
    theirs.train_from_iterator(iter(RUNS), 300, pattern=GPT2_LIKE)
    assert {bytes(t): i for t, i in theirs.get_mergeable_ranks() if i >= 256} == ids


def _respelled(model) -> list[tuple[int, bytes, list[bytes]]]:
    """(i, bytes, their tokens) for each merge i whose bytes, taken alone through the merges
    before it, do not end as exactly [left, right] with id 256 + i (spec step 3)."""
    spell = {i: t for t, i in model.ranks.items()}
    bad = []
    for i, (left, right) in enumerate(model.merges):
        word = tuple(left + right)
        for a, b in model.merges[:i]:
            word = train_ref.merge_word(word, (model.ranks[a], model.ranks[b]),
                                        model.ranks[a + b])
        if word != (model.ranks[left], model.ranks[right]) \
                or model.ranks[left + right] != 256 + i:
            bad.append((i, left + right, [spell[t] for t in word]))
    return bad


def _two_word_corpora():
    """Every corpus of two distinct words over {a, b} of 2..5 bytes, weights 1 or 2 each."""
    words = ["".join(w) for n in range(2, 6) for w in itertools.product("ab", repeat=n)]
    for u, v in itertools.combinations(words, 2):
        for m, n in ((1, 1), (1, 2), (2, 1)):
            yield [u] * m + [v] * n


def test_no_merge_spells_an_existing_token():
    """Spec step 3's argument, checked: each merge's bytes alone, run through the merges
    before it, end as exactly its [left, right] (so they were not a token yet) and the merge
    has id 256 + i; on the real corpus, the runs above and every two-word corpus over {a, b}
    up to 5 bytes (overlaps of (a, a) and neighbours taken by earlier merges are the only
    ways a spelling could depend on context), for the reference and bpe_fast."""
    fast = importlib.import_module("lmspec.backends.bpe_fast.bpe_train")
    model = R.bpe_train(CORPUS, vocab_size=400, pattern=GPT2_LIKE)
    assert len(model.merges) == 144 and not _respelled(model)
    for corpus in (RUNS, ["aaabdaaabac"], *_two_word_corpora()):
        for train in (R.bpe_train, fast.bpe_train):
            model = train(corpus, vocab_size=300, pattern=r"(?s).+")
            assert not _respelled(model), (train.__module__, corpus, _respelled(model))
