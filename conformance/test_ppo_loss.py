"""Conformance of ppo_loss: the three losses, both gradients, errors, and PPO's properties."""

from __future__ import annotations

from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec.ppo_loss import COMPONENT

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


def _with(case: Case, arrays=None, **params) -> Case:
    return Case({**case.arrays, **(arrays or {})}, {**case.params, **params})


@given(case=COMPONENT.cases())
def test_total_is_policy_plus_vf_coef_times_value(target, case):
    """loss(vf_coef = 0) is pg_loss; and pg_loss does not depend on vf_coef."""
    check.check_same(target, "vf_coef_zero", STEM, _with(case, vf_coef=0.0), case,
                     view_a=lambda o: o[0], view_b=lambda o: o[1])


@given(case=COMPONENT.cases())
def test_on_policy_the_clip_range_does_not_matter(target, case):
    """At logp == old_logp the ratio is 1, inside every clip range."""
    on = _with(case, {"old_logp": case.arrays["logp"]})
    check.check_same(target, "on_policy_pg", STEM, on, _with(on, clip_range=0.0),
                     view_a=lambda o: o[1], view_b=lambda o: o[1])


@given(case=COMPONENT.cases())
def test_value_clip_is_inactive_at_the_old_values(target, case):
    at_old = _with(case, {"old_values": case.arrays["values"]})
    check.check_same(target, "value_clip_at_old", STEM, at_old,
                     _with(at_old, clip_range_value=0.0),
                     view_a=lambda o: o[2], view_b=lambda o: o[2])
