"""moe_balance_loss reference vs finite differences, hand-derived values, and HF transformers'
load_balancing_loss_func (Mixtral), which counts every slot over N tokens: k times ours."""

from __future__ import annotations

import numpy as np
import pytest
from _refcheck import F32_RTOL, assert_close, fd_check

from lmspec.reference import moe_balance_loss, moe_router, softmax
from lmspec.spec import Case


def _routed(n=12, e=6, k=2, seed=0, sigmoid=False):
    logits = np.random.default_rng(seed).standard_normal((n, e))
    ids, _, scores = moe_router(logits, top_k=k, score_func="sigmoid" if sigmoid else "softmax")
    return logits, ids, scores


@pytest.mark.parametrize("kind,n_seq,sigmoid", [("switch", 1, False), ("seq", 3, True),
                                                 ("seq", 1, False), ("z", 1, False)])
def test_vjp_matches_finite_differences(kind, n_seq, sigmoid):
    logits, ids, scores = _routed(sigmoid=sigmoid)
    first = logits if kind == "z" else scores
    case = Case({"scores": first, "topk_ids": ids}, {"kind": kind, "n_seq": n_seq, "alpha": 0.3})
    fd_check("moe_balance_loss", case, {"scores": 1e-6}, rtol=1e-6)


@pytest.mark.parametrize("kind", ["switch", "seq"])
@pytest.mark.parametrize("alpha", [1.0, 0.01])
def test_uniform_routing_gives_alpha(kind, alpha):
    """Every expert gets N k / E assignments and every score is 1/E: f_i P_i sums to 1
    (switch: E * E * (1/E)(1/E); seq: E * (1)(1/E))."""
    e, k, n = 4, 2, 8
    ids = (np.arange(n)[:, None] * k + np.arange(k)[None, :]) % e
    loss = moe_balance_loss(np.full((n, e), 1 / e), ids, kind=kind, n_seq=2, alpha=alpha)
    assert_close(loss, alpha, rtol=1e-15)


def test_collapsed_routing_gives_e():
    """All tokens on expert 0 with all the probability: f = P = e_0, loss = E."""
    e = 5
    scores = np.zeros((3, e))
    scores[:, 0] = 1.0
    ids = np.zeros((3, 1), np.int64)
    assert_close(moe_balance_loss(scores, ids, kind="switch"), e)
    assert_close(moe_balance_loss(scores, ids, kind="seq", n_seq=3), e)


def test_z_loss_hand_value():
    x = np.array([[0.0, 0.0, 0.0, 0.0], [np.log(3.0), 0.0, 0.0, 0.0]])  # lse = log 4, log 6
    want = 1e-3 * (np.log(4.0) ** 2 + np.log(6.0) ** 2) / 2
    assert_close(moe_balance_loss(x, None, kind="z", alpha=1e-3), want)


def test_seq_is_the_mean_over_sequences_of_single_sequence_losses():
    _, ids, scores = _routed(n=12, sigmoid=True)
    whole = moe_balance_loss(scores, ids, kind="seq", n_seq=3, alpha=0.5)
    parts = [moe_balance_loss(scores[i:i + 4], ids[i:i + 4], kind="seq", alpha=0.5)
             for i in range(0, 12, 4)]
    assert_close(whole, np.mean(parts))


def test_seq_normalizes_scores_per_token():
    """Scaling a token's sigmoid scores by a constant leaves the seq loss unchanged (s' is
    normalized), but changes the switch loss."""
    _, ids, scores = _routed(sigmoid=True)
    scaled = scores * np.linspace(0.5, 2.0, len(scores))[:, None]
    assert_close(moe_balance_loss(scaled, ids, kind="seq"), moe_balance_loss(scores, ids,
                                                                              kind="seq"))


def test_switch_is_hf_load_balancing_loss_over_k():
    torch = pytest.importorskip("torch")
    hf = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    logits = np.random.default_rng(2).standard_normal((32, 8))
    for k in (1, 2, 3):
        hf_loss = hf.load_balancing_loss_func((torch.from_numpy(logits),), 8, k)
        ids, _, _ = moe_router(logits, top_k=k)
        ours = moe_balance_loss(softmax(logits), ids, kind="switch")
        assert_close(float(hf_loss) / k, ours, rtol=F32_RTOL, atol=0, what=f"k={k}")
