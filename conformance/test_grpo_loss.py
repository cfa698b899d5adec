"""Conformance of grpo_loss: loss, advantages, gradient, errors, and GRPO's properties."""

from __future__ import annotations

import numpy as np
from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec import _strategies as S
from lmspec.spec.grpo_loss import COMPONENT

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


def _with(case: Case, arrays=None, **params) -> Case:
    return Case({**case.arrays, **(arrays or {})}, {**case.params, **params})


@given(case=COMPONENT.cases())
def test_group_size_one_leaves_only_the_kl_term(target, case):
    """A group of one has advantage 0: the ratio (old_logp) no longer matters."""
    one = _with(case, group_size=1)
    other = _with(one, {"old_logp": case.arrays["logp"] + 0.25})
    check.check_same(target, "group_size_one", STEM, one, other)
    check.check_same(target, "group_size_one_advantages", STEM, one,
                     _with(one, {"rewards": np.zeros_like(case.arrays["rewards"])}),
                     view_a=lambda o: o[1], view_b=lambda o: o[1])


@given(case=COMPONENT.cases())
def test_kl_vanishes_at_the_reference(target, case):
    """k3 = 0 where logp == ref_logp: any beta gives the beta = 0 loss."""
    at_ref = _with(case, {"ref_logp": case.arrays["logp"]})
    check.check_same(target, "kl_zero_at_ref", STEM, at_ref, _with(at_ref, beta=0.0))


@given(case=COMPONENT.cases())
def test_equal_lengths_make_per_token_and_per_sequence_agree(target, case):
    full = _with(case, {"mask": np.ones_like(case.arrays["mask"])})
    full = Case(full.arrays, {k: v for k, v in full.params.items()
                              if k != "max_completion_length"})
    check.check_same(target, "grpo_equals_bnpo", STEM, _with(full, loss_type="grpo"),
                     _with(full, loss_type="bnpo"))


@given(case=COMPONENT.cases(), seed=S.seeds())
def test_order_of_groups_and_of_rows_in_a_group_does_not_matter(target, case, seed):
    g = case.params["group_size"]
    b = case.arrays["rewards"].shape[0]
    rng = np.random.default_rng(seed)
    groups = rng.permutation(b // g)
    perm = np.concatenate([grp * g + rng.permutation(g) for grp in groups])
    moved = Case({k: v[perm] for k, v in case.arrays.items()}, case.params)
    check.check_same(target, "group_permutation", STEM, case, moved)
