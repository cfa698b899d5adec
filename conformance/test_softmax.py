"""Conformance of softmax: forward, gradient, error inputs, and the spec's properties."""

from __future__ import annotations

import numpy as np
from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec.softmax import COMPONENT

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


@given(case=COMPONENT.cases())
def test_shift_invariance(target, case):
    """softmax(x + c) == softmax(x), on integer x and c so that x + c is exact in any dtype."""
    x = np.clip(case.arrays["x"].round(), -64, 64)
    check.check_same(target, "shift_invariance", STEM, Case({"x": x}, case.params),
                     Case({"x": x + 16.0}, case.params))


@given(case=COMPONENT.cases())
def test_exp_log_softmax_is_softmax(target, case):
    """exp(log_softmax(x)) == softmax(x): the two components agree."""
    check.check_same(target, "exp_log_softmax", "log_softmax", case, case,
                     view_a=lambda o: np.exp(o[0]), stem_b=STEM)
