"""Conformance of geglu: forward, gradient, error inputs, and the spec's properties."""

from __future__ import annotations

from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec.geglu import COMPONENT

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
