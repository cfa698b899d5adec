"""gptq and awq references: a hand-derived GPTQ step (the error feedback is the least-squares
update), weights on the grid stay put, lazy batch updates change nothing where groups start at
block starts, act-order's equivariance, AWQ's grid, and the quality gate: GPTQ and AWQ beat
RTN's output error at 4 bits on activations with outlier channels (a fixed seed)."""

from __future__ import annotations

import numpy as np
import pytest
from _refcheck import assert_close

from lmspec import reference as R
from lmspec.reference.awq import awq_losses, candidate_scales, fake_quant
from lmspec.reference.gptq import dequant_gptq, hessian, inverse_cholesky


def _codes(v, lo, hi):
    s = np.float32((hi - lo) / 15)
    z = np.clip(np.rint(-lo / np.float64(s)), 0, 15)
    return np.clip(np.rint(v / np.float64(s)) + z, 0, 15), np.float64(s), z


def test_two_columns_by_hand():
    """Column 0 is rounded; column 1 absorbs its error through the least-squares update
    ``w1 += (w0 - deq0) * H01 / H11`` (damp 0), then is rounded on the same group's grid."""
    w = np.array([[0.6, -0.35]])
    x = np.array([[1.0, 1.0], [1.0, -0.5], [0.0, 2.0], [0.3, 0.7]])
    q, scales, zeros, perm = R.gptq(w, x, group_size=2, damp=0.0)
    h = hessian(x)
    q0, s, z = _codes(w[0, 0], -0.35, 0.6)
    w1 = w[0, 1] + (w[0, 0] - (q0 - z) * s) * h[0, 1] / h[1, 1]
    q1 = np.clip(np.rint(w1 / s) + z, 0, 15)
    assert q.tolist() == [[q0, q1]] and zeros.tolist() == [[z]] and perm.tolist() == [0, 1]
    assert scales[0, 0] == np.float32(s)
    assert q1 != _codes(w[0, 1], -0.35, 0.6)[0]  # the feedback changed the rounding here


def test_inverse_cholesky_is_upper_factor_of_the_damped_inverse():
    rng = np.random.default_rng(0)
    h = hessian(rng.standard_normal((6, 4)))
    u = inverse_cholesky(h, 0.01)
    assert np.allclose(np.tril(u, -1), 0)
    damped = h + 0.01 * np.mean(np.diag(h)) * np.eye(4)
    assert_close(u.T @ u, np.linalg.inv(damped), rtol=1e-10, atol=1e-12)


def test_weights_on_the_grid_are_kept():
    """Every group spans codes 0..15 with zero 7 and scale 1/8 (exact): RTN reproduces the
    grid, the rounding error of every column is 0, so no feedback moves anything."""
    rng = np.random.default_rng(1)
    q = rng.integers(0, 16, (4, 16))
    q[:, 0::8], q[:, 1::8] = 0, 15
    w = (q - 7) * 0.125
    x = rng.standard_normal((10, 16))
    for act_order in (False, True):
        got, scales, zeros, _ = R.gptq(w, x, group_size=8, act_order=act_order,
                                      static_groups=True)
        assert np.array_equal(got, q) and np.all(zeros == 7) and np.all(scales == 0.125)


@pytest.mark.parametrize("act_order", [False, True])
def test_lazy_batches_change_nothing_when_groups_start_at_block_starts(act_order):
    """block_size dividing group_size: every group's grid comes from the fully updated w, and
    deferring the updates of later columns to the block's end is only a reassociation."""
    rng = np.random.default_rng(2)
    w, x = rng.standard_normal((6, 32)), rng.standard_normal((40, 32))
    want = R.gptq(w, x, group_size=8, block_size=8, act_order=act_order)
    for bs in (1, 2, 4):
        got = R.gptq(w, x, group_size=8, block_size=bs, act_order=act_order)
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(a, b), bs
    # a group starting inside a block takes its grid from the stale block-start w (AutoGPTQ)
    stale = R.gptq(w, x, group_size=8, block_size=128, act_order=act_order)
    assert not np.array_equal(stale[1], want[1])


def test_act_order_is_equivariant_under_column_permutations():
    """Permuting the inputs' columns permutes the codes the same way (and nothing else): the
    processing order is diag(H)'s, and the permutation is undone in the returned codes."""
    rng = np.random.default_rng(3)
    w, x = rng.standard_normal((5, 16)), rng.standard_normal((30, 16)) * rng.uniform(0.1, 3, 16)
    p = rng.permutation(16)
    q, s, z, perm = R.gptq(w, x, group_size=4, act_order=True)
    qp, sp, zp, permp = R.gptq(w[:, p], x[:, p], group_size=4, act_order=True)
    assert np.array_equal(qp, q[:, p]) and np.array_equal(sp, s) and np.array_equal(zp, z)
    assert np.array_equal(p[permp], perm)
    # g_idx: column j's group is its position in the processing order // group_size
    deq = dequant_gptq(q, s, z, perm, 4, act_order=True)
    assert_close(deq[:, perm[:4]], (q[:, perm[:4]] - z[:, :1].astype(float)) * s[:, :1])


def test_awq_one_grid_point_is_rtn_and_scales_are_normalized():
    rng = np.random.default_rng(4)
    w, x = rng.standard_normal((3, 16)), rng.standard_normal((8, 16))
    q, scales, zeros, s = R.awq(w, x, group_size=8, n_grid=1)
    rq, rs, rz = R.rtn_int4_codes(w, 8)
    assert np.array_equal(q, rq) and np.array_equal(scales, rs) and np.all(s == 1)
    c = candidate_scales(x, 0.5).astype(np.float64)
    assert abs(c.max() * c.min() - 1) < 1e-6
    assert_close(c / c[0], (np.abs(x).mean(0) / np.abs(x[:, 0]).mean()) ** 0.5, rtol=1e-6)


def _outlier_layer(seed: int = 0):
    rng = np.random.default_rng(seed)
    out, n_in, n = 64, 128, 256
    w = rng.standard_normal((out, n_in)) / np.sqrt(n_in)
    x = rng.standard_normal((n, n_in))
    x[:, rng.choice(n_in, 4, replace=False)] *= 20.0  # outlier channels, as in LLM activations
    return w, x


def test_quality_gate_gptq_and_awq_beat_rtn_on_outlier_activations():
    """The issue's gate, at 4 bits, group size 32: output error on the calibration inputs."""
    w, x = _outlier_layer()
    y = x @ w.T

    def err(w_hat):
        return float(np.mean((y - x @ w_hat.T) ** 2))

    gs = 32
    rtn = err(fake_quant(w, np.ones(128, np.float32), gs)[3])
    q, s, z, perm = R.gptq(w, x, group_size=gs)
    gptq = err(dequant_gptq(q, s, z, perm, gs))
    q, s, z, perm = R.gptq(w, x, group_size=gs, act_order=True)
    gptq_act = err(dequant_gptq(q, s, z, perm, gs, act_order=True))
    qa, sa, za, sc = R.awq(w, x, group_size=gs)
    g = np.arange(128) // gs
    awq = err((qa - za[:, g].astype(float)) * sa[:, g] / sc.astype(float))
    assert gptq < 0.9 * rtn and gptq_act < gptq and awq < 0.5 * rtn, (rtn, gptq, gptq_act, awq)
    assert awq == pytest.approx(awq_losses(w, x, group_size=gs).min(), rel=1e-9)
    assert sc[np.abs(x).mean(0).argmax()] == sc.max()  # the outlier channel is scaled up most
