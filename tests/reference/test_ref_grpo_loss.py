"""GRPO reference vs finite differences, hand values and TRL's conventions (read, not run)."""

from __future__ import annotations

import numpy as np
import pytest
from _refcheck import FD_SETTINGS, assert_close, fd_check
from hypothesis import given

from lmspec.reference import grpo_loss, grpo_loss_vjp
from lmspec.spec import Case, component


@FD_SETTINGS
@given(component("grpo_loss").cases())
def test_vjp_matches_finite_differences(case):
    # the strategy keeps every ratio >= 2% from a clip edge: a 1e-6 step never crosses one
    fd_check("grpo_loss", case, {"logp": 1e-6})


def _inputs(b=4, t=3, seed=0):
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.5, 2.0, (b, t))
    return logp, logp - rng.uniform(-0.1, 0.1, (b, t)), logp - 0.3, rng.standard_normal(b)


def test_advantages_by_hand():
    # group (1, 2, 3): mean 2, unbiased std 1 -> (-1, 0, 1) / (1 + 1e-4)
    logp = np.zeros((3, 2))
    _, adv = grpo_loss(logp, logp, logp, np.array([1.0, 2.0, 3.0]), np.ones((3, 2), np.int64),
                       group_size=3)
    assert_close(adv, np.array([-1.0, 0.0, 1.0]) / (1 + 1e-4), rtol=1e-15)
    _, adv = grpo_loss(logp, logp, logp, np.array([1.0, 2.0, 3.0]), np.ones((3, 2), np.int64),
                       group_size=3, scale_rewards=False)
    assert_close(adv, [-1.0, 0.0, 1.0], rtol=1e-15)


def test_group_size_one_is_the_kl_term_only():
    logp, old, ref, r = _inputs()
    m = np.ones(logp.shape, np.int64)
    loss, adv = grpo_loss(logp, old, ref, r, m, group_size=1, beta=0.1)
    d = ref - logp
    assert_close(adv, np.zeros(4), atol=0)
    assert_close(loss, 0.1 * np.mean(np.exp(d) - d - 1), rtol=1e-14)


def test_k3_is_nonnegative_and_zero_at_the_reference():
    logp, old, _, r = _inputs()
    m = np.ones(logp.shape, np.int64)
    rng = np.random.default_rng(3)
    for ref in (logp + rng.standard_normal(logp.shape), logp - 3.0, logp + 3.0):
        kl_only = grpo_loss(logp, logp, ref, np.zeros(4), m, group_size=2, beta=1.0)[0]
        assert kl_only > 0
    assert grpo_loss(logp, logp, logp, np.zeros(4), m, group_size=2, beta=1.0)[0] == 0.0
    # the sign of ref - logp matters: k3(d) != k3(-d)
    a = grpo_loss(logp, logp, logp - 1.0, np.zeros(4), m, group_size=2, beta=1.0)[0]
    assert_close(a, np.exp(-1.0) + 1.0 - 1.0, rtol=1e-14)


def test_on_policy_gradient_is_the_unclipped_policy_gradient():
    """At logp == old_logp (ratio 1, inside every clip range) d loss / d logp = -A m w."""
    logp, _, ref, r = _inputs()
    m = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 1]])
    _, adv = grpo_loss(logp, logp, ref, r, m, group_size=2)
    g = grpo_loss_vjp(np.float64(1.0), logp, logp, ref, r, m, group_size=2)["logp"]
    want = -adv[:, None] * m / (4 * m.sum(1, keepdims=True))
    assert_close(g, want, rtol=1e-14, atol=1e-16)


def test_per_token_and_per_sequence_differ_with_unequal_lengths():
    logp, old, ref, r = _inputs()
    ragged = np.array([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]])
    full = np.ones((4, 3), np.int64)
    kw = dict(group_size=2, beta=0.1)
    seq = grpo_loss(logp, old, ref, r, ragged, loss_type="grpo", **kw)[0]
    tok = grpo_loss(logp, old, ref, r, ragged, loss_type="bnpo", **kw)[0]
    assert abs(seq - tok) > 1e-3
    seq = grpo_loss(logp, old, ref, r, full, loss_type="grpo", **kw)[0]
    tok = grpo_loss(logp, old, ref, r, full, loss_type="bnpo", **kw)[0]
    dr = grpo_loss(logp, old, ref, r, full, loss_type="dr_grpo", **kw)[0]
    assert_close(seq, tok, rtol=1e-14)
    assert_close(dr, tok, rtol=1e-14)  # max_completion_length defaults to T: n = B T
    dr8 = grpo_loss(logp, old, ref, r, full, loss_type="dr_grpo", max_completion_length=6, **kw)
    assert_close(dr8[0], tok / 2, rtol=1e-14)


@pytest.mark.parametrize(("ratio", "adv", "eps", "hi", "want"), [
    (1.5, 1.0, 0.2, 0.28, -1.28),   # A > 0: clipped above at 1 + eps_high
    (0.5, 1.0, 0.2, 0.28, -0.5),    # A > 0, ratio low: unclipped (pessimistic min)
    (0.5, -1.0, 0.2, 0.28, 0.8),    # A < 0: clipped below at 1 - eps
    (1.5, -1.0, 0.2, 0.28, 1.5),    # A < 0, ratio high: unclipped
])
def test_clip_by_hand(ratio, adv, eps, hi, want):
    logp = np.zeros((2, 1))
    old = logp - np.log(ratio)
    r = np.array([adv, -adv])  # centred already: A = r without std scaling
    loss, a = grpo_loss(logp, old, logp, r, np.array([[1], [0]]), group_size=2, epsilon=eps,
                        epsilon_high=hi, loss_type="bnpo", scale_rewards=False)
    assert_close(a[0], adv, rtol=1e-15)
    assert_close(loss, want, rtol=1e-12)


def test_fd_on_an_explicit_ragged_case():
    logp, old, ref, r = _inputs(seed=4)
    case = Case({"logp": logp, "old_logp": old, "ref_logp": ref, "rewards": r,
                 "mask": np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]])},
                {"group_size": 2, "beta": 0.5, "epsilon_high": 0.28})
    fd_check("grpo_loss", case, {"logp": 1e-6})
