"""Conformance of log_softmax: forward (1e30-scale logits included), gradient, error inputs."""

from __future__ import annotations

import numpy as np
from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec.log_softmax import COMPONENT

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


@given(case=COMPONENT.cases())
def test_shift_invariance(target, case):
    """log_softmax(x + c) == log_softmax(x) on integer x and c (x + c exact, <= 192: bfloat16
    holds integers to 256); c = 128 takes logits past exp's float32 overflow at ~88.7."""
    x = np.clip(case.arrays["x"].round(), -64, 64)
    check.check_same(target, "shift_invariance", STEM, Case({"x": x}, case.params),
                     Case({"x": x + 128.0}, case.params))
