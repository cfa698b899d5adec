"""Conformance of layer_norm: forward, gradient, error inputs, and the spec's properties."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec.layer_norm import COMPONENT

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


@given(case=COMPONENT.cases())
def test_shift_invariance(target, case):
    """layer_norm(x + c) == layer_norm(x), with integer x in [-4, 4] and c = 2^(mantissa bits
    // 3) (2^7 in float32, 2^2 in bfloat16), so x + c is exact: a mean far above the spread,
    where a one-pass variance (E[x^2] - E[x]^2) cancels and a two-pass one does not."""
    x = np.clip(case.arrays["x"].round(), -4, 4)
    shift = float(2.0 ** (ml_dtypes.finfo(target.np_dtype).nmant // 3))
    base = dict(case.arrays, x=x)
    check.check_same(target, "shift_invariance", STEM, Case(base, case.params),
                     Case(dict(base, x=x + shift), case.params))
