"""The trainer's data pipeline (train/data.py): the stdlib corpus, its split, the trained
vocabulary and its cache, packing into rows with segment ids, the unigram entropy, and the
deterministic, resumable batch order. Each property checker is proven by planted bugs."""

from __future__ import annotations

import json
import math
import os
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmspec.train import data as D
from lmspec.train.data import IGNORE_INDEX

PROFILE = os.environ.get("LMSPEC_PROFILE", "ci")
# pack examples per hypothesis run (the project's budgets, conformance/conftest.py)
EXAMPLES = {"smoke": 10, "ci": 60, "ci-noshrink": 60, "thorough": 500}.get(PROFILE, 60)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return D.corpus_documents(120_000)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vocab-cache")


@pytest.fixture(scope="module")
def vocab(corpus, cache) -> D.Vocabulary:
    return D.train_vocabulary(corpus, 300, cache_dir=cache)


# ----------------------------------------------------------------------------- corpus, split


def _size(docs) -> int:
    return sum(len(d.encode("utf-8")) for d in docs)


def test_corpus_is_deterministic_and_a_smaller_cap_is_a_prefix():
    small, large = D.corpus_documents(60_000), D.corpus_documents(200_000)
    assert D.corpus_documents(60_000) == small
    assert 0 < len(small) < len(large) and large[:len(small)] == small
    assert _size(small) <= 60_000 < _size(small) + len(large[len(small)].encode())  # maximal
    assert _size(large) <= 200_000
    assert D.corpus_documents(0) == []
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = D.corpus_paths()
    assert paths == sorted(paths) and not any(set(Path(p).parts[:-1]) & D.TEST_DIRS
                                              for p in paths)
    assert set(paths) < set(D.corpus_paths(include_tests=True))
    first = next(p for p in paths if (root / p).stat().st_size)  # empty files are skipped
    assert small[0] == (root / first).read_bytes().decode("utf-8")  # the file, untranslated
    with pytest.raises(ValueError, match="max_bytes"):
        D.corpus_documents(-1)


def test_split_is_by_index():
    docs = [f"d{i}" for i in range(10)]
    train, held = D.split(docs, every=3)  # held out: i % 3 == 2
    assert held == ["d2", "d5", "d8"]
    assert train == ["d0", "d1", "d3", "d4", "d6", "d7", "d9"]
    t7, h7 = D.split(docs[:7], every=3)  # a prefix splits as a prefix
    assert train[:len(t7)] == t7 and held[:len(h7)] == h7
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="every"):
            D.split(docs, every=bad)


# ----------------------------------------------------------------------------- vocabulary


def test_vocabulary_round_trips_text_exactly(corpus, vocab):
    assert vocab.n_vocab <= 300 and vocab.eos_id == len(vocab.tokens) == vocab.n_vocab - 1
    assert vocab.tokens[:256] == tuple(bytes([b]) for b in range(256))
    tok = vocab.tokenizer()
    others = ["", "héllo wörld 🚀\r\n\tx = {'a': 1}  # ok", D.EOS, "a\x00b\u200b" * 3]
    ids = D.encode(tok, corpus + others)
    for text, x in zip(corpus + others, ids):
        assert x.dtype == np.int32 and tok.decode(x.tolist()) == text
        assert vocab.eos_id not in x  # EOS's text inside a document is plain text
    n_tok = sum(len(x) for x in ids[:len(corpus)])
    # 300 - 257 = 43 merges compress (bytes alone: 1.0 bytes/token; measured 1.49)
    assert _size(corpus) / n_tok > 1.3
    assert D.Vocabulary.from_json(json.loads(json.dumps(vocab.to_json()))) == vocab
    with pytest.raises(ValueError, match="eos"):
        D.Vocabulary.from_json({**vocab.to_json(), "eos": "</s>"})


def test_vocabulary_is_cached(corpus, vocab, cache, monkeypatch):
    (path,) = cache.glob("vocab-*.json")

    def no_training(name):
        raise AssertionError(f"retrained through backend {name}")

    monkeypatch.setattr(D.backends, "load", no_training)  # the planted retrain would raise
    assert D.train_vocabulary(corpus, 300, cache_dir=cache) == vocab
    with pytest.raises(AssertionError, match="retrained"):  # the key holds the size
        D.train_vocabulary(corpus, 290, cache_dir=cache)
    with pytest.raises(AssertionError, match="retrained"):  # and the texts
        D.train_vocabulary(corpus[:-1], 300, cache_dir=cache)
    assert list(cache.glob("vocab-*.json")) == [path]
    monkeypatch.undo()
    for bad in (256, 300.0):
        with pytest.raises(ValueError, match="vocab_size"):
            D.train_vocabulary(corpus, bad)
    with pytest.raises(TypeError, match="texts"):
        D.train_vocabulary("not a list", 300)


# ----------------------------------------------------------------------------- packing


def check_pack(rows: dict, docs, seq_len: int, eos_id: int) -> None:
    """The packing contract, restated position by position: AssertionError if it fails."""
    tok, tgt, seg = rows["tokens"], rows["targets"], rows["segment_ids"]
    stream = [t for d in docs for t in [*d, eos_id]]
    doc_of = [i for i, d in enumerate(docs) for _ in range(len(d) + 1)]
    n = -(-len(stream) // seq_len)
    for a in (tok, tgt, seg):
        assert a.shape == (n, seq_len) and a.dtype == np.int32
    pad = seg == len(docs)
    flat_pad = pad.ravel()
    assert flat_pad.sum() == n * seq_len - len(stream) and not flat_pad[:len(stream)].any()
    assert tok.ravel()[:len(stream)].tolist() == stream  # every document, then EOS, in order
    assert seg.ravel()[:len(stream)].tolist() == doc_of  # a segment per document
    for r in range(n):
        for t in range(seq_len):
            same = t + 1 < seq_len and not pad[r, t] and seg[r, t + 1] == seg[r, t]
            assert tgt[r, t] == (tok[r, t + 1] if same else IGNORE_INDEX), (r, t)
    eos = (tok == eos_id) & ~pad
    assert (tgt[eos] == IGNORE_INDEX).all() and (tgt[pad] == IGNORE_INDEX).all()


def test_pack_a_hand_worked_example():
    docs = [[1, 2, 3], [4], [], [5, 6, 7, 8, 9]]
    rows = D.pack(docs, 4, eos_id=0)
    # stream 1 2 3 E | 4 E | E | 5 6 7 8 9 E: 13 tokens, 4 rows of 4, 3 padding (P = E, seg 4)
    I = IGNORE_INDEX  # noqa: E741
    assert rows["tokens"].tolist() == [[1, 2, 3, 0], [4, 0, 0, 5], [6, 7, 8, 9], [0, 0, 0, 0]]
    assert rows["segment_ids"].tolist() == [[0, 0, 0, 0], [1, 1, 2, 3], [3, 3, 3, 3],
                                            [3, 4, 4, 4]]
    # 3 predicts E; E predicts nothing; 5 and 9 end a row (doc 3 is cut: 9 -> E is lost)
    assert rows["targets"].tolist() == [[2, 3, 0, I], [0, I, I, I], [7, 8, 9, I], [I] * 4]
    check_pack(rows, docs, 4, 0)


@settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(st.lists(st.integers(0, 9), max_size=12), max_size=8),
       seq_len=st.integers(1, 9))
def test_pack_properties(docs, seq_len):
    check_pack(D.pack(docs, seq_len, 10), docs, seq_len, 10)


def _plants(rows: dict, n_docs: int) -> dict[str, dict]:
    """Wrong packings, each one contract violated (the checker must reject every one)."""
    tok, tgt, seg = rows["tokens"], rows["targets"], rows["segment_ids"]
    pad = seg == n_docs
    cross_doc = tgt.copy()
    cross_doc[:, :-1] = np.where(pad[:, :-1], IGNORE_INDEX, tok[:, 1:])  # no segment check
    cross_row = tgt.copy()
    nxt = np.roll(tok[:, 0], -1)  # a row's last token predicting the next row's first
    cross_row[:-1, -1] = np.where(seg[:-1, -1] == seg[1:, 0], nxt[:-1], IGNORE_INDEX)
    pad_predicts = np.where(pad, tok, tgt)
    one_segment = np.where(pad, seg, 0)
    return {"targets cross documents": {**rows, "targets": cross_doc},
            "targets cross rows": {**rows, "targets": cross_row},
            "padding predicts": {**rows, "targets": pad_predicts},
            "one segment per row": {**rows, "segment_ids": one_segment.astype(np.int32)},
            "int64 tokens": {**rows, "tokens": tok.astype(np.int64)}}


def test_check_pack_catches_every_plant():
    docs = [[1, 2, 3], [4], [], [5, 6, 7, 8, 9], [3]]  # 15 tokens: 1 padding
    rows = D.pack(docs, 4, eos_id=0)
    check_pack(rows, docs, 4, 0)
    for name, wrong in _plants(rows, len(docs)).items():
        assert any(not np.array_equal(wrong[k], rows[k]) or wrong[k].dtype != rows[k].dtype
                   for k in rows), name  # the plant changes something here
        with pytest.raises(AssertionError):
            check_pack(wrong, docs, 4, 0)
    no_eos = D.pack([[*d, 1] for d in docs], 4, eos_id=0)  # EOS replaced by a plain token
    with pytest.raises(AssertionError):
        check_pack(no_eos, docs, 4, 0)


def test_pack_on_the_corpus_and_errors(corpus, vocab):
    ids = D.encode(vocab.tokenizer(), corpus[:4])
    rows = D.pack(ids, 64, vocab.eos_id)
    check_pack(rows, [x.tolist() for x in ids], 64, vocab.eos_id)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="seq_len"):
            D.pack(ids, bad, vocab.eos_id)
    with pytest.raises(ValueError, match="eos_id"):
        D.pack(ids, 64, -1)


def test_unigram_entropy_hand_computed():
    ids = np.array([[1, 1, 2, IGNORE_INDEX], [3, 3, 3, 3]])
    # counts 1: 2, 2: 1, 3: 4 of 7 (the ignored one left out):
    # H = -(2/7 ln 2/7 + 1/7 ln 1/7 + 4/7 ln 4/7) = ln 7 - (2 ln 2 + 4 ln 4) / 7
    #   = ln 7 - 10/7 ln 2 = 1.9459101 - 0.9902103 = 0.9556998
    assert D.unigram_entropy(ids) == pytest.approx(0.9556998, abs=1e-7)
    assert D.unigram_entropy(np.arange(5)) == pytest.approx(math.log(5), abs=1e-12)
    assert D.unigram_entropy(np.array([7, 7, IGNORE_INDEX])) == 0.0
    with pytest.raises(ValueError, match="ids"):
        D.unigram_entropy(np.full(3, IGNORE_INDEX))


# ----------------------------------------------------------------------------- batches


def _rows(n: int, t: int = 3, offset: int = 0) -> dict[str, np.ndarray]:
    """Row i holds tokens i*t .. i*t+t-1 (+offset): a batch shows which rows it took."""
    tok = (np.arange(n * t, dtype=np.int32) + offset).reshape(n, t)
    return {"tokens": tok, "targets": tok + 1, "segment_ids": np.zeros_like(tok)}


def _row_ids(batch) -> list[int]:
    return (batch["tokens"][..., 0] // batch["tokens"].shape[-1]).ravel().tolist()


def test_batches_are_deterministic_and_visit_every_row_once_per_epoch():
    rows = _rows(12)
    a, b = D.Batches(rows, 2, 3, seed=7), D.Batches(rows, 2, 3, seed=7)
    assert a.steps_per_epoch == 2
    first = [next(a) for _ in range(6)]
    assert all(x["tokens"].shape == (3, 2, 3) for x in first)  # (A, B, T)
    for x, y in zip(first, (next(b) for _ in range(6))):
        for k in rows:
            assert np.array_equal(x[k], y[k])
            assert x[k].dtype == np.int32
    epochs = [sum((_row_ids(x) for x in first[e * 2:e * 2 + 2]), []) for e in range(3)]
    for e in epochs:
        assert sorted(e) == list(range(12))
    # another order each epoch and for another seed (false alarm: 1 / 12! each)
    assert epochs[0] != epochs[1] != epochs[2]
    other = D.Batches(rows, 2, 3, seed=8)
    assert sum((_row_ids(next(other)) for _ in range(2)), []) != epochs[0]
    odd = D.Batches(_rows(13), 2, 3, seed=0)  # 13 rows, 6 per step: 12 per epoch, no repeat
    for _ in range(3):
        seen = _row_ids(next(odd)) + _row_ids(next(odd))
        assert len(set(seen)) == 12 and set(seen) < set(range(13))


def check_resume(make, total: int, cuts) -> None:
    """Stopping after ``cut`` batches, a fresh iterator loaded with the (JSON round-tripped)
    state continues exactly as the uninterrupted stream."""
    whole = [next(it) for it in [make()] for _ in range(total)]
    for cut in cuts:
        first = make()
        for _ in range(cut):
            next(first)
        state = json.loads(json.dumps(first.state_dict()))
        resumed = make()
        resumed.load_state_dict(state)
        for i in range(cut, total):
            got = next(resumed)
            for k in whole[i]:
                assert np.array_equal(got[k], whole[i][k]), (cut, i, k)


def test_batches_resume_exactly_mid_epoch_and_across_the_boundary():
    rows = _rows(13)  # 2 steps per epoch: cuts 2 and 4 fall on epoch boundaries
    check_resume(lambda: D.Batches(rows, 2, 3, seed=3), 7, cuts=range(7))


class _ForgetsEpoch(D.Batches):
    def load_state_dict(self, state):  # planted: resumes in epoch 0's order
        super().load_state_dict(state)
        self._order = self._permutation(0)


class _ForgetsIndex(D.Batches):
    def state_dict(self):  # planted: the position within the epoch is lost
        return {**super().state_dict(), "index": 0}


def test_check_resume_catches_the_plants():
    rows = _rows(13)
    for plant in (_ForgetsEpoch, _ForgetsIndex):
        with pytest.raises(AssertionError):
            check_resume(lambda p=plant: p(rows, 2, 3, seed=3), 7, cuts=range(7))


def test_batches_refuse_a_state_of_other_data():
    rows = _rows(12)
    state = D.Batches(rows, 2, 3, seed=1).state_dict()
    cases = [(D.Batches(_rows(12, offset=1), 2, 3, seed=1), "fingerprint"),  # same row count
             (D.Batches(_rows(14), 2, 3, seed=1), "n_rows"),
             (D.Batches(rows, 2, 2, seed=1), "rows_per_step"),
             (D.Batches(rows, 2, 3, seed=2), "seed")]
    for batches, what in cases:
        with pytest.raises(ValueError, match=what):
            batches.load_state_dict(state)
    same = D.Batches(rows, 3, 2, seed=1)  # 3 x 2 rows per step visits as 2 x 3 does
    same.load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        same.load_state_dict({k: v for k, v in state.items() if k != "epoch"})
    with pytest.raises(ValueError, match="index"):
        same.load_state_dict({**state, "index": 3})
    for kw, what in (({"batch_size": 0}, "batch_size"), ({"micro_batches": 0}, "micro_batches"),
                     ({"batch_size": 13}, "batch_size"), ({"seed": -1}, "seed")):
        with pytest.raises(ValueError, match=what):
            D.Batches(rows, **{"batch_size": 2, **kw})


def test_in_order_and_default_data(cache):
    rows = _rows(5)
    batches = list(D.in_order(rows, 2))
    assert [_row_ids(b) for b in batches] == [[0, 1], [2, 3], [4]]
    data = D.default_data(32, vocab_size=300, max_bytes=150_000, vocab_bytes=60_000, every=3,
                          cache_dir=cache)
    train_docs, valid_docs = D.split(D.corpus_documents(150_000), 3)
    tok = data.vocab.tokenizer()
    for rows, docs in ((data.train, train_docs), (data.valid, valid_docs)):
        check_pack(rows, [x.tolist() for x in D.encode(tok, docs)], 32, data.vocab.eos_id)
    assert data.vocab.n_vocab <= 300
    assert data.entropy == D.unigram_entropy(data.train["targets"])
    assert 0 < data.entropy < math.log(data.vocab.n_vocab)
