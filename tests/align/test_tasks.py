"""The synthetic tasks, their verifiable reward and the SFT rows: hand-worked rows, the
prompt mask, and packed == unpacked on the float64 reference (loss and every gradient), with
planted row builders that each check catches."""

from __future__ import annotations

import numpy as np
import pytest

from lmspec import reference
from lmspec.align import tasks as T
from lmspec.spec._model_config import ModelConfig, init_params

IGNORE = T.IGNORE_INDEX


def test_examples_are_deterministic_and_answers_verifiable():
    a, b = T.examples("reverse", 20, seed=3), T.examples("reverse", 20, seed=3)
    assert a == b and a != T.examples("reverse", 20, seed=4)
    for e in a:
        word = e.prompt.split()[1]
        assert e.answer == word[::-1] and T.reward(e.answer, e.answer) == 1.0
    for e in T.examples("add", 20, seed=0):
        x, y = e.prompt[:-1].split("+")
        assert int(e.answer) == int(x) + int(y)
    assert T.examples("add", 5, seed=(1, 2)) == T.examples("add", 5, seed=[1, 2])
    with pytest.raises(ValueError, match="task"):
        T.examples("sort", 1, 0)
    with pytest.raises(ValueError, match="n:"):
        T.examples("add", -1, 0)


def test_reward_by_hand():
    assert T.reward("dcba", "dcba") == 1.0
    assert T.reward(" dcba\n", "dcba") == 1.0  # surrounding whitespace is not the answer
    assert T.reward("dcbx", "dcba") == 0.75
    assert T.reward("dc", "dcba") == 0.5  # a short answer: over the longer length
    assert T.reward("dcbaaaaa", "dcba") == 0.5  # so is rambling on
    assert T.reward("", "dcba") == 0.0


def test_corrupt_is_always_wrong_and_near():
    rng = np.random.default_rng(0)
    for e in T.examples("reverse", 50, 1) + T.examples("add", 50, 1):
        bad = T.corrupt(e.answer, rng)
        assert bad != e.answer and len(bad) == len(e.answer)
        assert T.reward(bad, e.answer) >= 1 - 2 / len(e.answer) - 1e-12


class _Chars:
    """A tokenizer of one id per character (ord), enough to hand-check rows."""

    def encode_ordinary(self, text):
        return [ord(c) for c in text]


def test_sft_rows_by_hand():
    p, a = [1, 2, 3], [7, 8, 0]  # 0 = EOS
    rows = T.sft_rows([(p, a), ([4], [9, 0])], seq_len=10, eos_id=0)
    assert rows["tokens"].tolist() == [[1, 2, 3, 7, 8, 0, 4, 9, 0, 0]]
    assert rows["segment_ids"].tolist() == [[0, 0, 0, 0, 0, 0, 1, 1, 1, -1]]
    x = IGNORE
    assert rows["targets"].tolist() == [[x, x, 7, 8, 0, x, 9, 0, x, x]]
    one = T.sft_rows([(p, a), ([4], [9, 0])], seq_len=6, eos_id=0, pack=False)
    assert one["tokens"].shape == (2, 6)
    assert one["targets"].tolist() == [[x, x, 7, 8, 0, x], [9, 0, x, x, x, x]]
    with pytest.raises(ValueError, match="seq_len"):
        T.sft_rows([(p, a)], seq_len=5, eos_id=0)
    with pytest.raises(ValueError, match="no answer"):
        T.sft_rows([(p, [])], seq_len=5, eos_id=0)


def test_encode_example_uses_the_template():
    p, a = T.encode_example(_Chars(), "reverse ab", "ba", eos_id=0)
    assert "".join(map(chr, p)) == "<|user|>reverse ab<|assistant|>"
    assert a == [ord("b"), ord("a"), 0]


def test_completion_rows():
    rows, mask = T.completion_rows([[1, 2], [3]], [[5, 0], [6, 7, 0]], pad_id=0)
    x = IGNORE
    assert rows["tokens"].tolist() == [[1, 2, 5, 0], [3, 6, 7, 0]]
    assert rows["targets"].tolist() == [[x, 5, 0, x], [6, 7, 0, x]]
    assert mask.tolist() == [[0, 1, 1, 0], [1, 1, 1, 0]]
    with pytest.raises(ValueError, match="completions"):
        T.completion_rows([[1]], [], pad_id=0)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        T.completion_rows([[]], [[1]], pad_id=0)


# ----------------------------------------------------------------------------- packed


def _crossing(pairs, seq_len, eos_id, pack=True):
    """Plant: packed rows whose targets cross into the next conversation (the segment's last
    target predicts the next conversation's first token)."""
    rows = T.sft_rows(pairs, seq_len, eos_id, pack=pack)
    t, seg = rows["targets"], rows["segment_ids"]
    nxt = (seg[:, 1:] != seg[:, :-1]) & (seg[:, 1:] >= 0)
    t[:, :-1] = np.where(nxt, rows["tokens"][:, 1:], t[:, :-1])
    return rows


def _unmasked(pairs, seq_len, eos_id, pack=True):
    """Plant: the prompt is trained on too (the classic SFT masking bug)."""
    rows = T.sft_rows(pairs, seq_len, eos_id, pack=pack)
    t, seg = rows["targets"], rows["segment_ids"]
    same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] >= 0)
    t[:, :-1] = np.where(same, rows["tokens"][:, 1:], t[:, :-1])
    return rows


def _no_segments(pairs, seq_len, eos_id, pack=True):
    """Plant: packed rows without segment ids (attention crosses conversations)."""
    rows = T.sft_rows(pairs, seq_len, eos_id, pack=pack)
    rows["segment_ids"] = np.zeros_like(rows["segment_ids"]) if pack else rows["segment_ids"]
    return rows


CFG = ModelConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=24)


def _packed_equals_unpacked(build) -> None:
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(1, 40, int(rng.integers(1, 5))).tolist(),
              [*rng.integers(1, 40, int(rng.integers(1, 4))).tolist(), 0]) for _ in range(5)]
    params = {n: np.asarray(a, np.float64) for n, a in init_params(CFG, 0).items()}
    out = []
    for pack in (True, False):
        rows = build(pairs, 16, 0, pack=pack)
        if pack:
            assert len(rows["tokens"]) < len(pairs)  # it did pack
        loss, _, grads = reference.model_grad(params, rows["tokens"], rows["targets"],
                                              segment_ids=rows["segment_ids"], config=CFG)
        out.append((float(loss), grads))
    (la, ga), (lb, gb) = out
    assert la == pytest.approx(lb, rel=1e-12, abs=0)
    for n in ga:
        np.testing.assert_allclose(ga[n], gb[n], rtol=1e-9, atol=1e-13, err_msg=n)
    expect = sum(len(a) for _, a in pairs)
    assert int((build(pairs, 16, 0)["targets"] != IGNORE).sum()) == expect  # only answers


def test_packed_equals_unpacked_on_the_reference():
    _packed_equals_unpacked(T.sft_rows)


@pytest.mark.parametrize("plant", [_crossing, _unmasked, _no_segments])
def test_the_packing_check_catches_the_plants(plant):
    with pytest.raises(AssertionError):
        _packed_equals_unpacked(plant)
