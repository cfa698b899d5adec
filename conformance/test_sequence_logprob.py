"""Conformance of sequence_logprob: log-probs, counts, gradient, errors; masked positions."""

from __future__ import annotations

import numpy as np
from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec import _strategies as S
from lmspec.spec.sequence_logprob import COMPONENT

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


@given(case=COMPONENT.cases(), seed=S.seeds())
def test_masked_positions_do_not_matter(target, case, seed):
    """New logits and targets (any id, -100 included) where mask is 0 change neither output:
    the prompt's tokens never enter the sum."""
    logits, targets, mask = (case.arrays[n] for n in ("logits", "targets", "mask"))
    rng = np.random.default_rng(seed)
    off = (mask == 0)
    other_l = np.where(off[..., None], rng.standard_normal(logits.shape) * 5, logits)
    other_t = np.where(off, rng.integers(-100, logits.shape[-1], targets.shape), targets)
    b = Case({"logits": other_l, "targets": other_t, "mask": mask})
    both = lambda o: np.concatenate([o[0], o[1]])  # noqa: E731  (logps, then counts)
    check.check_same(target, "masked_positions_absent", STEM, case, b, view_a=both, view_b=both)


@given(case=COMPONENT.cases(), seed=S.seeds())
def test_sequence_order_does_not_matter(target, case, seed):
    perm = np.random.default_rng(seed).permutation(case.arrays["logits"].shape[0])
    b = Case({n: a[perm] for n, a in case.arrays.items()})
    check.check_same(target, "sequence_permutation", STEM, case, b,
                     view_a=lambda o: o[0][perm])
