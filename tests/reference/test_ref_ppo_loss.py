"""PPO-clip reference vs finite differences and hand values (TRL's conventions, read)."""

from __future__ import annotations

import numpy as np
import pytest
from _refcheck import FD_SETTINGS, assert_close, fd_check
from hypothesis import given

from lmspec.reference import ppo_loss
from lmspec.spec import component


@FD_SETTINGS
@given(component("ppo_loss").cases())
def test_vjp_matches_finite_differences(case):
    # the strategy keeps ratios and values >= 2% / 0.03 from clip edges and value ties
    fd_check("ppo_loss", case, {"logp": 1e-6, "values": 1e-6})


def _one(logp=0.0, old=0.0, a=1.0, v=0.0, ov=0.0, ret=0.0, **kw):
    arr = [np.array([[x]]) for x in (logp, old, a, v, ov, ret)]
    return ppo_loss(*arr, np.array([[1]]), **kw)


@pytest.mark.parametrize(("ratio", "a", "want"), [
    (1.5, 1.0, -1.2), (0.5, 1.0, -0.5), (0.5, -1.0, 0.8), (1.5, -1.0, 1.5)])
def test_policy_clip_by_hand(ratio, a, want):
    _, pg, _ = _one(old=-np.log(ratio), a=a)
    assert_close(pg, want, rtol=1e-14)


@pytest.mark.parametrize(("v", "ov", "ret", "want"), [
    (1.0, 0.0, 0.0, 0.5),       # clipped to 0.2: max(1, 0.04) -> unclipped
    (1.0, 0.0, 2.0, 0.5 * 3.24),  # v_clip = 0.2 is further from R: its square wins
    (0.1, 0.0, 1.0, 0.5 * 0.81),  # inside the clip range: both equal
])
def test_value_clip_by_hand(v, ov, ret, want):
    loss, pg, vf = _one(v=v, ov=ov, ret=ret, a=0.0, vf_coef=0.1)
    assert_close(vf, want, rtol=1e-14)
    assert_close(loss, pg + 0.1 * vf, rtol=1e-14)


def test_masked_mean_and_empty_mask():
    rng = np.random.default_rng(0)
    arr = [rng.standard_normal((2, 3)) * 0.1 for _ in range(6)]
    m = np.array([[1, 1, 0], [1, 0, 0]])
    loss, pg, vf = ppo_loss(*arr, m)
    # dropping the masked tokens: the mean over the 3 valid ones
    keep = m.astype(bool)
    loss2, pg2, vf2 = ppo_loss(*[a[keep][None] for a in arr], np.ones((1, 3), np.int64))
    assert_close([loss, pg, vf], [loss2, pg2, vf2], rtol=1e-14)
    assert ppo_loss(*arr, np.zeros((2, 3), np.int64)) == (0.0, 0.0, 0.0)
