"""Conformance of gae: advantages and returns, errors, and the lambda = 1 / 0 limits."""

from __future__ import annotations

import numpy as np
from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec import _strategies as S
from lmspec.spec.gae import COMPONENT

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


def _with(case: Case, arrays=None, **params) -> Case:
    return Case({**case.arrays, **(arrays or {})}, {**case.params, **params})


@given(case=COMPONENT.cases())
def test_lam_one_returns_do_not_depend_on_values(target, case):
    """lam = 1: R_t is the discounted reward-to-go; the values cancel out of it."""
    one = _with(case, lam=1.0)
    zero_v = _with(one, {"values": np.zeros_like(case.arrays["values"])})
    check.check_same(target, "lam1_returns", STEM, one, zero_v,
                     view_a=lambda o: o[1], view_b=lambda o: o[1])


@given(case=COMPONENT.cases())
def test_lam_zero_advantages_are_one_step_td_errors(target, case):
    """lam = 0: A_t depends on (r_t, V_t, V_{t+1}) only: a later reward changes nothing before
    it except through no path at all (here: the rewards after step 0 are zeroed)."""
    zero = _with(case, lam=0.0)
    r = case.arrays["rewards"].copy()
    r[:, 1:] = 0.0
    check.check_same(target, "lam0_td", STEM, zero, _with(zero, {"rewards": r}),
                     view_a=lambda o: o[0][:, :1], view_b=lambda o: o[0][:, :1])


@given(case=COMPONENT.cases(), seed=S.seeds())
def test_rows_are_independent(target, case, seed):
    perm = np.random.default_rng(seed).permutation(case.arrays["rewards"].shape[0])
    moved = Case({k: v[perm] for k, v in case.arrays.items()}, case.params)
    check.check_same(target, "row_permutation", STEM, case, moved,
                     view_a=lambda o: o[0][perm], view_b=lambda o: o[0])
