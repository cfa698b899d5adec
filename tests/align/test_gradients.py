"""The alignment stages' one trick, checked on the float64 reference: ``train_step`` with the
per-target weights ``token_weights(mask, dL/dlogp)`` has the gradient of the alignment loss
itself. Each loss of a model's weights (DPO on chosen/rejected rows; GRPO on completion
windows with the sampler's log-probs held fixed) is differentiated by central finite
differences in float64 and compared with the weighted ``model_grad``; planted weightings
(the sign flipped, the 1/n forgotten, GRPO's window shifted by one) must each fail."""

from __future__ import annotations

import numpy as np
import pytest

from lmspec import backends, reference
from lmspec.align import gradients as L
from lmspec.align import tasks as T
from lmspec.spec._model_config import ModelConfig, init_params

REF = backends.load("reference")
CFG = ModelConfig(vocab_size=24, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=24)
F64 = "float64"
H = 1e-5  # central differences: error O(H^2) ~ 1e-10 against gradients of order 1e-2


def _params(seed=0):
    return {n: np.asarray(a, np.float64) * 3 for n, a in init_params(CFG, seed).items()}


def _rows(rng, b):
    prompts = [rng.integers(1, 24, int(rng.integers(1, 4))).tolist() for _ in range(b)]
    comps = [rng.integers(1, 24, int(rng.integers(1, 4))).tolist() for _ in range(b)]
    rows, mask = T.completion_rows(prompts, comps, pad_id=0)
    return rows, mask, np.array([len(p) - 1 for p in prompts])


def _probe(params, rng, k=12):
    """k random (name, index) entries of the trainable weights."""
    names = sorted(params)
    out = []
    for _ in range(k):
        n = names[int(rng.integers(len(names)))]
        out.append((n, tuple(int(rng.integers(s)) for s in params[n].shape)))
    return out


def _fd(loss_of, params, entries):
    got = []
    for n, i in entries:
        p = {k: v.copy() for k, v in params.items()}
        p[n][i] += H
        up = loss_of(p)
        p[n][i] -= 2 * H
        got.append((up - loss_of(p)) / (2 * H))
    return np.array(got)


def _weighted_grad(params, rows, mask, dlogp, weights=L.token_weights):
    _, _, g = reference.model_grad(params, rows["tokens"], rows["targets"], config=CFG,
                                   weights=weights(mask, dlogp).astype(np.float64))
    return g


def _wrong_sign(mask, dlogp):
    return -L.token_weights(mask, dlogp)


def _no_n(mask, dlogp):
    return (-dlogp * mask).astype(np.float32)


def _dpo_case(weights):
    rng = np.random.default_rng(1)
    params, ref = _params(0), _params(1)
    rows, mask, _ = _rows(rng, 6)  # 3 pairs
    lp = {"beta": 0.5, "loss_type": "sigmoid", "label_smoothing": 0.0}
    _, _, _, dlogp = L.dpo_gradients(REF, params, ref, CFG, rows, mask, lp, F64)
    g = _weighted_grad(params, rows, mask, dlogp, weights)
    entries = _probe(params, rng)
    fd = _fd(lambda p: L.dpo_gradients(REF, p, ref, CFG, rows, mask, lp, F64)[0], params, entries)
    np.testing.assert_allclose([g[n][i] for n, i in entries], fd, rtol=1e-5, atol=1e-9)


def _grpo_case(weights, shift=0):
    rng = np.random.default_rng(2)
    params, ref = _params(0), _params(1)
    rows, mask, starts = _rows(rng, 6)  # 2 groups of 3
    rewards = rng.random(6)
    lp = {"group_size": 3, "epsilon": 0.2, "beta": 0.3, "loss_type": "dr_grpo"}
    width = 4
    # the sampler's log-probs: those of other weights, held fixed (ratio != 1, clipping)
    old = L.grpo_gradients(REF, _params(2), None, CFG, rows, mask, starts, rewards, width,
                           lp, dtype=F64)[2]
    _, dlogp, *_ = L.grpo_gradients(REF, params, ref, CFG, rows, mask, starts + shift,
                                    rewards, width, lp, old_logp=old, dtype=F64)
    g = _weighted_grad(params, rows, mask, dlogp, weights)
    entries = _probe(params, rng)
    fd = _fd(lambda p: L.grpo_gradients(REF, p, ref, CFG, rows, mask, starts, rewards, width,
                                        lp, old_logp=old, dtype=F64)[0], params, entries)
    np.testing.assert_allclose([g[n][i] for n, i in entries], fd, rtol=1e-5, atol=1e-9)


def test_dpo_weighted_cross_entropy_has_the_dpo_gradient():
    _dpo_case(L.token_weights)


def test_grpo_weighted_cross_entropy_has_the_grpo_gradient():
    _grpo_case(L.token_weights)


@pytest.mark.parametrize("weights", [_wrong_sign, _no_n], ids=["wrong_sign", "no_n"])
def test_the_gradient_checks_catch_the_plants(weights):
    for case in (_dpo_case, _grpo_case):
        with pytest.raises(AssertionError):
            case(weights)


def test_the_grpo_check_catches_a_shifted_window():
    with pytest.raises(AssertionError):
        _grpo_case(L.token_weights, shift=1)


def test_completion_window():
    mask = np.array([[0, 1, 1, 0], [1, 1, 1, 0]])
    at, win = L.completion_window(mask, np.array([1, 0]), 3)
    assert at.tolist() == [[1, 2, 3], [0, 1, 2]]
    assert win.tolist() == [[1, 1, 0], [1, 1, 1]]
    at, win = L.completion_window(mask, np.array([2, 0]), 3)  # overhang clipped, masked
    assert at.tolist()[0] == [2, 3, 3] and win.tolist()[0] == [1, 0, 0]
