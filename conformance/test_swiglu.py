"""Conformance of swiglu: forward, gradient, error inputs, and the spec's properties."""

from __future__ import annotations

import numpy as np
from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec.swiglu import COMPONENT

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


@given(case=COMPONENT.cases())
def test_rows_are_independent(target, case):
    """The FFN of the last row alone equals that row of the batched FFN."""
    x = case.arrays["x"].reshape(-1, case.arrays["x"].shape[-1])
    if x.shape[0] < 2:
        return
    check.check_same(target, "rows_independent", STEM, Case(dict(case.arrays, x=x), case.params),
                     Case(dict(case.arrays, x=x[-1:]), case.params), view_a=lambda o: o[0][-1:])



@given(case=COMPONENT.cases())
def test_linear_in_the_up_projection(target, case):
    """swiglu(x, Wg, 2 Wu, Wd) == 2 swiglu(x, Wg, Wu, Wd): the up branch is linear, the gate
    is not, so a SiLU on the wrong branch breaks it (2 Wu is exact in any dtype)."""
    w_up = case.arrays["w_up"]
    w_up = np.where(np.abs(w_up) < 1e-3, 0.0, w_up)  # no subnormals: doubling them is inexact
    base = Case(dict(case.arrays, w_up=w_up), case.params)
    doubled = Case(dict(case.arrays, w_up=2.0 * w_up), case.params)
    check.check_same(target, "linear_in_up", STEM, doubled, base, view_b=lambda o: 2.0 * o[0])
