"""reward_model_loss reference vs finite differences, hand values, and TRL 1.16
RewardTrainer.compute_loss's formula (restated in torch: it needs a model to call)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _refcheck import FD_SETTINGS, assert_close, fd_check
from hypothesis import given

from lmspec.reference import reward_model_loss, reward_model_loss_vjp
from lmspec.spec import component


@FD_SETTINGS
@given(component("reward_model_loss").cases())
def test_vjp_matches_finite_differences(case):
    fd_check("reward_model_loss", case, {"chosen": 1e-5, "rejected": 1e-5})


def test_hand_values():
    z = np.zeros(3)
    assert_close(reward_model_loss(z, z), math.log(2), rtol=1e-15)
    # a margin of 1 on a lead of 1 is a tie
    assert_close(reward_model_loss(z + 1, z, z + 1), math.log(2), rtol=1e-15)
    assert_close(reward_model_loss(z + 2, z, z + 1), math.log1p(math.exp(-1)), rtol=1e-15)
    assert_close(reward_model_loss(z + 1, z + 1, center_coef=0.5), math.log(2) + 2, rtol=1e-15)


@pytest.mark.parametrize(("with_margin", "center"), [(False, 0.0), (True, 0.0), (True, 0.01)])
def test_against_trl_formula_in_torch(with_margin, center):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    c, r, m = rng.standard_normal((3, 7)) * 3
    m = np.abs(m) if with_margin else None
    tc, tr = torch.tensor(c, requires_grad=True), torch.tensor(r, requires_grad=True)
    d = tc - tr if m is None else tc - tr - torch.tensor(m)
    loss = -torch.nn.functional.logsigmoid(d).mean()
    if center:
        loss = loss + center * torch.mean((tc + tr) ** 2)
    loss.backward()
    assert_close(reward_model_loss(c, r, m, center_coef=center), loss.item(), rtol=1e-13)
    g = reward_model_loss_vjp(1.0, c, r, m, center_coef=center)
    assert_close(g["chosen"], tc.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert_close(g["rejected"], tr.grad.numpy(), rtol=1e-12, atol=1e-15)
