"""Conformance of cross_entropy: loss, gradient, error inputs, and masking properties."""

from __future__ import annotations

import numpy as np
from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec import _strategies as S
from lmspec.spec.cross_entropy import COMPONENT

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


@given(case=COMPONENT.cases())
def test_ignored_rows_are_as_if_absent(target, case):
    """Dropping the ignored positions leaves the loss unchanged (mean over valid targets)."""
    logits, targets = case.arrays["logits"], case.arrays["targets"]
    v = logits.shape[-1]
    flat_l, flat_t = logits.reshape(-1, v), targets.reshape(-1)
    keep = flat_t != case.params["ignore_index"]
    check.check_same(target, "ignored_rows_absent", STEM, case,
                     Case({"logits": flat_l[keep], "targets": flat_t[keep]}, case.params))


@given(case=COMPONENT.cases(), seed=S.seeds())
def test_row_order_does_not_matter(target, case, seed):
    logits, targets = case.arrays["logits"], case.arrays["targets"]
    v = logits.shape[-1]
    flat_l, flat_t = logits.reshape(-1, v), targets.reshape(-1)
    perm = np.random.default_rng(seed).permutation(len(flat_t))
    check.check_same(target, "row_permutation", STEM, case,
                     Case({"logits": flat_l[perm], "targets": flat_t[perm]}, case.params))
