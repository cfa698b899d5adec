"""preference_loss reference vs finite differences, hand values, and the formulas read from
TRL 1.16 DPOTrainer._compute_loss (restated in torch: TRL's loss is inline in a trainer method
and cannot be called without a model), and the cDPO form of TRL 0.x dpo_loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _refcheck import EPS64, FD_SETTINGS, assert_close
from hypothesis import given

from lmspec.reference import preference_loss, preference_loss_vjp, reward_model_loss
from lmspec.spec import component


@FD_SETTINGS
@given(component("preference_loss").cases())
def test_vjp_matches_finite_differences(case):
    """Central differences of the loss (the rewards are metrics: the spec gives them no
    gradient, so their cotangents are zero here and ignored by the vjp)."""
    a, p = case.arrays, case.params
    cot = float(np.random.default_rng(0).standard_normal())
    b = len(a["policy_chosen"])
    g = preference_loss_vjp((cot, np.ones(b), -np.ones(b)), **a, **p)
    for name in ("policy_chosen", "policy_rejected"):
        x = a[name]
        for i in range(b):
            step = 1e-6 * max(1.0, abs(x[i]))
            up, dn = x.copy(), x.copy()
            up[i] += step
            dn[i] -= step
            lp = preference_loss(**{**a, name: up}, **p)[0]
            lm = preference_loss(**{**a, name: dn}, **p)[0]
            fd = (lp - lm) / (up[i] - dn[i]) * cot
            tol = 1e-5 * abs(fd) + 10 * EPS64 * (abs(lp) + 1) * abs(cot) / (up[i] - x[i])
            assert abs(fd - g[name][i]) <= tol, (name, i, fd, g[name][i])


def _rand(b=6, seed=0, spread=3.0):
    rng = np.random.default_rng(seed)
    ref = -np.abs(rng.standard_normal((2, b))) * 20
    pol = ref + rng.standard_normal((2, b)) * spread
    return pol[0], pol[1], ref[0], ref[1]


@pytest.mark.parametrize(("loss_type", "eps"), [("sigmoid", 0.0), ("sigmoid", 0.2),
                                                 ("robust", 0.0), ("robust", 0.3), ("ipo", 0.0)])
def test_against_trl_formulas_in_torch(loss_type, eps):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    pc, pr, rc, rr = _rand(seed=1)
    beta = 0.2
    tc, tr = torch.tensor(pc, requires_grad=True), torch.tensor(pr, requires_grad=True)
    chosen_lr, rejected_lr = tc - torch.tensor(rc), tr - torch.tensor(rr)
    d = chosen_lr - rejected_lr
    if loss_type == "sigmoid":  # TRL 0.x dpo_loss (cDPO); 1.16 is its eps = 0 case
        per = -F.logsigmoid(beta * d) * (1 - eps) - F.logsigmoid(-beta * d) * eps
    elif loss_type == "robust":  # TRL 1.16
        per = (-(1 - eps) * F.logsigmoid(beta * d) + eps * F.logsigmoid(-beta * d)) / (1 - 2 * eps)
    else:  # TRL 1.16 ipo, on whatever log-probs it is given (TRL: per-token averages)
        per = (d - 1 / (2 * beta)) ** 2
    loss = per.mean()
    loss.backward()
    params = {"beta": beta, "loss_type": loss_type, "label_smoothing": eps}
    got, cr, rjr = preference_loss(pc, pr, rc, rr, **params)
    assert_close(got, loss.item(), rtol=1e-13)
    assert_close(cr, beta * chosen_lr.detach().numpy(), rtol=1e-13)
    assert_close(rjr, beta * rejected_lr.detach().numpy(), rtol=1e-13)
    g = preference_loss_vjp((1.0, np.ones(6), np.ones(6)), pc, pr, rc, rr, **params)
    assert set(g) == {"policy_chosen", "policy_rejected"}  # the reference log-probs: constants
    assert_close(g["policy_chosen"], tc.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert_close(g["policy_rejected"], tr.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_hand_values():
    x = -np.array([3.0, 7.0])
    for lt, eps in (("sigmoid", 0.0), ("sigmoid", 0.1), ("robust", 0.25)):
        assert_close(preference_loss(x, x, x, x, beta=0.3, loss_type=lt, label_smoothing=eps)[0],
                     math.log(2), rtol=1e-15)
    assert_close(preference_loss(x, x, x, x, beta=0.5, loss_type="ipo")[0], 1.0, rtol=1e-15)
    # h = 2, beta = 1: -log sigmoid(2) = log(1 + e^-2)
    z = np.zeros(1)
    assert_close(preference_loss(z + 2, z, z, z, beta=1.0)[0], math.log1p(math.exp(-2)),
                 rtol=1e-15)


def test_dpo_is_bradley_terry_on_implicit_rewards():
    pc, pr, rc, rr = _rand(seed=2)
    loss, cr, rjr = preference_loss(pc, pr, rc, rr, beta=0.1)
    assert_close(loss, reward_model_loss(cr, rjr), rtol=1e-13)


def test_gradient_vanishes_at_large_margins_only_without_smoothing():
    z = np.zeros(2)
    for h in (10.0, 100.0, 1e4):
        g = preference_loss_vjp((1.0, z, z), z + h, z, z, z, beta=1.0)["policy_chosen"]
        assert np.all(np.abs(g) <= math.exp(-h) + 1e-300)
    g = preference_loss_vjp((1.0, z, z), z + 1e4, z, z, z, beta=1.0, label_smoothing=0.2)
    assert_close(g["policy_chosen"], np.full(2, 0.2 / 2), rtol=1e-15)  # eps beta / B


def test_rewards_cotangents_are_ignored():
    pc, pr, rc, rr = _rand(seed=4)
    a = preference_loss_vjp((1.0, np.zeros(6), np.zeros(6)), pc, pr, rc, rr)
    b = preference_loss_vjp((1.0, np.ones(6) * 7, -np.ones(6)), pc, pr, rc, rr)
    assert_close(a["policy_chosen"], b["policy_chosen"], atol=0)
