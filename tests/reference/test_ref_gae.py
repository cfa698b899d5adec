"""GAE reference vs hand-derived limits (lambda 1 and 0) and TRL's loop on right-padded rows."""

from __future__ import annotations

import numpy as np
import pytest
from _refcheck import assert_close

from lmspec.reference import gae


def _data(b=3, t=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((b, t)), rng.standard_normal((b, t))


@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.0])
def test_lam_one_is_discounted_return_minus_value(gamma):
    r, v = _data()
    m = np.ones(r.shape, np.int64)
    adv, ret = gae(r, v, m, gamma=gamma, lam=1.0)
    t = r.shape[1]
    disc = np.array([[sum(gamma**k * r[i, s + k] for k in range(t - s)) for s in range(t)]
                     for i in range(r.shape[0])])
    assert_close(ret, disc, rtol=1e-13, atol=1e-14)
    assert_close(adv, disc - v, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_lam_zero_is_the_td_error(gamma):
    r, v = _data()
    m = np.ones(r.shape, np.int64)
    adv, ret = gae(r, v, m, gamma=gamma, lam=0.0)
    next_v = np.concatenate([v[:, 1:], np.zeros((r.shape[0], 1))], axis=1)
    assert_close(adv, r + gamma * next_v - v, rtol=1e-14, atol=1e-15)
    assert_close(ret, adv + v, rtol=1e-14, atol=1e-15)


def test_hand_values():
    # T = 2, gamma = 0.5, lam = 0.5: delta_1 = 1 - 2 = -1; delta_0 = 1 + 0.5*2 - 1 = 1
    # A_1 = -1; A_0 = 1 + 0.25 * -1 = 0.75; R = A + V
    adv, ret = gae(np.array([[1.0, 1.0]]), np.array([[1.0, 2.0]]), np.array([[1, 1]]),
                   gamma=0.5, lam=0.5)
    assert_close(adv, [[0.75, -1.0]], rtol=1e-15)
    assert_close(ret, [[1.75, 1.0]], rtol=1e-15)


def test_right_padding_equals_trl_loop():
    """TRL's PPOTrainer loop on values zeroed past the end and rewards 0 there."""
    r, v = _data(seed=1)
    lengths = np.array([6, 3, 0])
    m = (np.arange(6)[None] < lengths[:, None]).astype(np.int64)
    rp, vp = r * m, v * m
    gamma, lam = 0.99, 0.95
    last, out = 0.0, []
    for s in reversed(range(6)):
        nextv = vp[:, s + 1] if s < 5 else 0.0
        last = rp[:, s] + gamma * nextv - vp[:, s] + gamma * lam * last
        out.append(last)
    want = np.stack(out[::-1], axis=1)
    adv, ret = gae(r, v, m, gamma=gamma, lam=lam)
    assert_close(adv, want * m, rtol=1e-13, atol=1e-14)
    assert_close(ret, (want + vp) * m, rtol=1e-13, atol=1e-14)


def test_a_masked_step_is_a_boundary():
    r, v = _data(b=1, t=5, seed=2)
    m = np.array([[1, 1, 0, 1, 1]])
    adv, _ = gae(r, v, m, gamma=0.9, lam=0.8)
    left, _ = gae(r[:, :2], v[:, :2], m[:, :2], gamma=0.9, lam=0.8)
    right, _ = gae(r[:, 3:], v[:, 3:], m[:, 3:], gamma=0.9, lam=0.8)
    assert_close(adv, np.concatenate([left, [[0.0]], right], axis=1), rtol=1e-15)
