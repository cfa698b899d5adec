"""Conformance of layer_norm: forward, gradient, error inputs, and the spec's properties."""

from __future__ import annotations

from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec.layer_norm import COMPONENT

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


@given(case=COMPONENT.cases())
def test_shift_invariance(target, case):
    """layer_norm(x + c) == layer_norm(x): on integer-valued x and c, so x + c is exact."""
    x = case.arrays["x"].round()
    base = dict(case.arrays, x=x)
    check.check_same(target, "shift_invariance", STEM, Case(base, case.params),
                     Case(dict(base, x=x + 8.0), case.params))
