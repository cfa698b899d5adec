"""Conformance of lightning_attention: forward, gradient, errors; equal to linear_attention with
the identity map for every block size, and a carried state equals one pass."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lmspec.conformance import _check as check
from lmspec.conformance.test_linear_attention import OUTPUTS, check_two_calls
from lmspec.spec import Case
from lmspec.spec.lightning_attention import COMPONENT
from lmspec.spec.linear_attention import FORMS

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


@given(case=COMPONENT.cases(), form=st.sampled_from(FORMS), chunk=st.integers(1, 17))
def test_equals_linear_attention_with_the_identity_map(target, case, form, chunk):
    linear = Case(case.arrays, {"feature_map": "identity", "form": form, "chunk_size": chunk,
                                "scale": case.params["scale"]})
    for name, view in OUTPUTS.items():
        check.check_same(target, f"is_linear_{name}", STEM, case, linear, view, view,
                         stem_b="linear_attention")


@given(case=COMPONENT.cases(), block=st.integers(1, 17))
def test_every_block_size_agrees(target, case, block):
    other = Case(case.arrays, dict(case.params, block_size=block))
    for name, view in OUTPUTS.items():
        check.check_same(target, f"block_size_{name}", STEM, case, other, view, view)


@given(case=COMPONENT.cases(), data=st.data())
def test_a_carried_state_equals_one_pass(target, case, data):
    t = case.arrays["q"].shape[1]
    if t < 2:
        return
    check_two_calls(target, STEM, case, data.draw(st.integers(1, t - 1)))
