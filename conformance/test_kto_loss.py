"""Conformance of kto_loss: loss, baseline, gradient (zero through the baseline), errors,
the clamp, example order."""

from __future__ import annotations

import numpy as np
from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec import _strategies as S
from lmspec.spec.kto_loss import COMPONENT

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


@given(case=COMPONENT.cases(), seed=S.seeds())
def test_negative_kl_estimate_is_clamped_to_zero(target, case, seed):
    """A KL estimate below 0 acts as 0: the same loss as with mismatched pairs of log-ratio 0."""
    a = dict(case.arrays)
    m = len(a["ref_kl_logps"])
    below = a["policy_kl_logps"] - np.abs(np.random.default_rng(seed).standard_normal(m)) - 0.5
    neg = Case({**a, "ref_kl_logps": a["policy_kl_logps"], "policy_kl_logps": below},
               case.params)
    zero = Case({**a, "policy_kl_logps": np.zeros(m), "ref_kl_logps": np.zeros(m)}, case.params)
    both = lambda o: np.array([o[0], o[1]])  # noqa: E731  (loss, baseline)
    check.check_same(target, "clamped_kl", STEM, neg, zero, view_a=both, view_b=both)


@given(case=COMPONENT.cases(), seed=S.seeds())
def test_example_order_does_not_matter(target, case, seed):
    a = case.arrays
    perm = np.random.default_rng(seed).permutation(len(a["policy_logps"]))
    b = Case({n: (v[perm] if n in ("policy_logps", "ref_logps", "desirable") else v)
              for n, v in a.items()}, case.params)
    check.check_same(target, "example_permutation", STEM, case, b)
