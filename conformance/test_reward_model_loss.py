"""Conformance of reward_model_loss: loss, gradient, errors, swap identity, pair order."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec import _strategies as S
from lmspec.spec.reward_model_loss import COMPONENT

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


@given(case=COMPONENT.cases())
def test_swapping_chosen_and_rejected(target, case):
    """margin None, no centering: loss(r, c) = loss(c, r) + mean(c - r)."""
    assume(case.params["center_coef"] == 0.0)
    r = check.rounded(case, STEM, target.np_dtype)
    gap = float(np.mean(r["chosen"] - r["rejected"]))
    a = Case({"chosen": r["rejected"], "rejected": r["chosen"], "margin": None}, case.params)
    b = Case({"chosen": r["chosen"], "rejected": r["rejected"], "margin": None}, case.params)
    check.check_same(target, "swap", STEM, a, b, view_b=lambda o: o[0] + gap)


@given(case=COMPONENT.cases(), seed=S.seeds())
def test_pair_order_does_not_matter(target, case, seed):
    perm = np.random.default_rng(seed).permutation(len(case.arrays["chosen"]))
    b = Case({n: None if a is None else a[perm] for n, a in case.arrays.items()}, case.params)
    check.check_same(target, "pair_permutation", STEM, case, b)
