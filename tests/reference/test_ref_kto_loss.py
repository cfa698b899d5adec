"""kto_loss reference vs finite differences (the baseline's gradient is zero by the spec, so
the differences are taken with the baseline held fixed), hand values, and TRL 1.16
KTOTrainer._compute_loss's formulas (restated in torch: it needs a model to call)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _refcheck import EPS64, FD_SETTINGS, assert_close
from hypothesis import given

from lmspec.reference import kto_loss, kto_loss_vjp
from lmspec.spec import component


@FD_SETTINGS
@given(component("kto_loss").cases())
def test_vjp_matches_finite_differences(case):
    """Central differences in policy_logps; in policy_kl_logps the spec's derivative is 0 (the
    baseline is detached), which is not the function's derivative: checked as exactly 0."""
    a, p = case.arrays, case.params
    cot = np.random.default_rng(0).standard_normal(2)
    g = kto_loss_vjp((cot[0], cot[1]), **a, **p)
    assert np.all(g["policy_kl_logps"] == 0.0)
    x = a["policy_logps"]
    for i in range(len(x)):
        up, dn = x.copy(), x.copy()
        up[i] += 1e-5 * max(1.0, abs(x[i]))
        dn[i] -= 1e-5 * max(1.0, abs(x[i]))
        lp = kto_loss(**{**a, "policy_logps": up}, **p)[0]
        lm = kto_loss(**{**a, "policy_logps": dn}, **p)[0]
        fd = (lp - lm) / (up[i] - dn[i]) * cot[0]
        tol = 1e-5 * abs(fd) + 10 * EPS64 * (abs(lp) + 1) * abs(cot[0]) / (up[i] - x[i])
        assert abs(fd - g["policy_logps"][i]) <= tol, (i, fd, g["policy_logps"][i], case)


def test_hand_values():
    one = np.ones(2)
    # policy == reference, KL 0: every example loses w * sigmoid(0) = w / 2
    got, kl = kto_loss(-one, -one, np.array([1, 0]), -one, -one, desirable_weight=1.0,
                       undesirable_weight=3.0)
    assert_close(got, (0.5 + 1.5) / 2, rtol=1e-15)
    assert kl == 0.0
    # a negative KL estimate is clamped to 0
    assert kto_loss(-one, -one, np.array([1, 1]), -one - 5, -one)[1] == 0.0
    # desirable r = 2, z0 = 1, beta = 1: 1 - sigmoid(1)
    got, kl = kto_loss(np.array([2.0]), np.array([0.0]), np.array([1]), np.array([1.0]),
                       np.array([0.0]), beta=1.0)
    assert_close(got, 1 / (1 + math.e), rtol=1e-15)
    assert_close(kl, 1.0, atol=0)


@pytest.mark.parametrize("kl_shift", [-2.0, 3.0])
def test_against_trl_formulas_in_torch(kl_shift):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    b, beta, wd, wu = 9, 0.3, 1.33, 0.7
    ref = -np.abs(rng.standard_normal(b)) * 10
    pol = ref + rng.standard_normal(b) * 3
    label = rng.uniform(size=b) < 0.5
    ref_kl = -np.abs(rng.standard_normal(b)) * 10
    pol_kl = ref_kl + rng.standard_normal(b) + kl_shift
    tp, tk = torch.tensor(pol, requires_grad=True), torch.tensor(pol_kl, requires_grad=True)
    kl = (tk - torch.tensor(ref_kl)).mean().detach().clamp(min=0)
    lab = torch.tensor(label)
    chosen = 1 - torch.sigmoid(beta * ((tp - torch.tensor(ref))[lab] - kl))
    rejected = 1 - torch.sigmoid(beta * (kl - (tp - torch.tensor(ref))[~lab]))
    loss = torch.cat((wd * chosen, wu * rejected)).nanmean()
    loss.backward()
    got, z0 = kto_loss(pol, ref, label.astype(np.int64), pol_kl, ref_kl, beta=beta,
                       desirable_weight=wd, undesirable_weight=wu)
    assert_close(got, loss.item(), rtol=1e-13)
    assert_close(z0, kl.item(), rtol=1e-15, atol=0)
    g = kto_loss_vjp((1.0, 0.0), pol, ref, label.astype(np.int64), pol_kl, ref_kl, beta=beta,
                     desirable_weight=wd, undesirable_weight=wu)
    assert_close(g["policy_logps"], tp.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert tk.grad is None  # TRL detaches the baseline too
