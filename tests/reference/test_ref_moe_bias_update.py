"""moe_bias_update reference: hand values, sign(0) = 0, and aux-loss-free balancing of a skewed
router over many steps (DeepSeek-V3's claim, simulated with the reference)."""

from __future__ import annotations

import numpy as np
from _refcheck import assert_close

from lmspec.reference import moe_bias_update, moe_router


def test_hand_values():
    # N k = 4 assignments over E = 4 experts: mean load 1; loads 2, 1, 1, 0
    new = moe_bias_update(np.array([0.5, 0.0, -0.5, 0.0]), np.array([[0, 1], [0, 2]]),
                          n_experts=4, gamma=0.1)
    assert_close(new, [0.4, 0.0, -0.5, 0.1])


def test_fractional_mean_is_compared_exactly():
    # N k = 3 over E = 2: mean 1.5; loads 2 and 1
    new = moe_bias_update(np.zeros(2), np.array([[0], [0], [1]]), n_experts=2, gamma=1.0)
    assert new.tolist() == [-1.0, 1.0]


def test_balanced_and_empty_steps_leave_the_bias_unchanged():
    bias = np.array([0.3, -0.2, 0.1])
    ids = np.array([[0, 1], [2, 0], [1, 2]])
    assert moe_bias_update(bias, ids, n_experts=3, gamma=0.5).tolist() == bias.tolist()
    empty = np.zeros((0, 2), np.int64)
    assert moe_bias_update(bias, empty, n_experts=3, gamma=0.5).tolist() == bias.tolist()


def simulate(steps=200, n=256, e=16, k=2, gamma=1e-2, seed=0):
    """Loads (E,) before and after ``steps`` bias updates on a router with a fixed skew."""
    rng = np.random.default_rng(seed)
    skew = np.linspace(1.5, -1.5, e)  # expert 0 favoured
    bias = np.zeros(e)
    first = None
    for _ in range(steps):
        logits = rng.standard_normal((n, e)) + skew
        ids, _, _ = moe_router(logits, bias, top_k=k, score_func="sigmoid")
        first = np.bincount(ids.reshape(-1), minlength=e) if first is None else first
        bias = moe_bias_update(bias, ids, n_experts=e, gamma=gamma)
    return first, np.bincount(ids.reshape(-1), minlength=e), bias


def test_bias_updates_balance_a_skewed_router():
    before, after, bias = simulate(steps=150, n=128)
    mean = 128 * 2 / 16
    assert before.max() > 3 * mean  # skewed at the start
    assert after.max() < 1.6 * mean  # close to balance after the updates
    assert bias[0] < 0 < bias[-1]  # the favoured expert pushed down, the starved one up
