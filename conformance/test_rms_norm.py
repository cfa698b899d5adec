"""Conformance of rms_norm: forward, gradient, error inputs, and the spec's properties."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec import _strategies as S
from lmspec.spec.rms_norm import COMPONENT

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


@given(case=COMPONENT.cases(), data=st.data())
def test_gemma_offset_is_one_plus_weight(target, case, data):
    """rms_norm(x, w, weight_offset=1) == rms_norm(x, 1 + w): w on a grid where 1 + w is exact."""
    d = case.arrays["x"].shape[-1]
    w = data.draw(S.int_arrays((d,), -16, 17)).astype(np.float64) / 8  # exact in every dtype
    x = case.arrays["x"]
    eps = case.params["eps"]
    check.check_same(target, "gemma_offset", STEM,
                     Case({"x": x, "weight": w}, {"eps": eps, "weight_offset": 1.0}),
                     Case({"x": x, "weight": 1.0 + w}, {"eps": eps, "weight_offset": 0.0}))


@given(case=COMPONENT.cases())
def test_rows_are_independent(target, case):
    """Normalising rows one by one equals normalising the batch (no cross-row reduction)."""
    x = case.arrays["x"].reshape(-1, case.arrays["x"].shape[-1])
    if x.shape[0] < 2:
        return
    check.check_same(target, "rows_independent", STEM,
                     Case({"x": x, "weight": case.arrays["weight"]}, case.params),
                     Case({"x": x[-1:], "weight": case.arrays["weight"]}, case.params),
                     view_a=lambda o: o[0][-1:])
