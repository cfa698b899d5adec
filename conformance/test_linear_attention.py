"""Conformance of linear_attention: forward, gradient, errors; the forms agree, causality, and
a state carried between calls equals one pass."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec._tolerance import judge
from lmspec.spec.linear_attention import COMPONENT, FORMS

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)

OUTPUTS = {"out": lambda o: o[0], "final_state": lambda o: o[1]}


@given(case=COMPONENT.cases(), data=st.data())
def test_the_three_forms_agree(target, case, data):
    """parallel, recurrent and chunked compute one function (out and final_state)."""
    other = data.draw(st.sampled_from([f for f in FORMS if f != case.params["form"]]))
    case_b = Case(case.arrays, dict(case.params, form=other))
    for name, view in OUTPUTS.items():
        check.check_same(target, f"form_{other}_{name}", STEM, case, case_b, view, view)


@given(case=COMPONENT.cases(), chunk=st.integers(1, 17))
def test_chunked_agrees_for_every_chunk_size(target, case, chunk):
    case_a = Case(case.arrays, dict(case.params, form="chunked"))
    case_b = Case(case.arrays, dict(case.params, form="chunked", chunk_size=chunk))
    for name, view in OUTPUTS.items():
        check.check_same(target, f"chunk_size_{name}", STEM, case_a, case_b, view, view)


@given(case=COMPONENT.cases(), data=st.data())
def test_output_ignores_the_future(target, case, data):
    """out at t is the same whether or not tokens after t exist."""
    t = case.arrays["q"].shape[1]
    if t < 2:
        return
    m = data.draw(st.integers(1, t - 1))
    cut = {n: (a[:, :m] if n in ("q", "k", "v") else a) for n, a in case.arrays.items()}
    check.check_same(target, "causal_prefix", STEM, case, Case(cut, case.params),
                     view_a=lambda o: o[0][:, :m])


def run_in_two_calls(target, stem: str, case: Case, m: int):
    """Tokens [0, m) then [m, T) with the backend's own final_state (float32, never rounded to
    the input dtype) as the second call's initial_state; None if not implemented."""
    arrays = check.rounded(case, stem, target.np_dtype)
    seq = ("q", "k", "v")
    first = check.to_native(target, stem, {n: (a[:, :m] if n in seq else a)
                                           for n, a in arrays.items()})
    r1 = check.run_case(target, stem, "property", lambda: target.backend.call(
        stem, first, case.params))
    if r1 is None:
        return None
    second = check.to_native(target, stem, {n: (a[:, m:] if n in seq else a)
                                            for n, a in arrays.items()})
    second["initial_state"] = r1[1]
    r2 = check.run_case(target, stem, "property", lambda: target.backend.call(
        stem, second, case.params))
    if r2 is None:
        return None
    out = np.concatenate([target.backend.to_numpy(r1[0]), target.backend.to_numpy(r2[0])], 1)
    return arrays, (out, target.backend.to_numpy(r2[1]))


def check_two_calls(target, stem: str, case: Case, m: int) -> None:
    """Both calls together must meet the tolerance policy of one call against the reference."""
    check.require_impl(target, stem)
    result = run_in_two_calls(target, stem, case, m)
    if result is None:
        return
    arrays, got = result
    ref = check.reference_outputs(stem, arrays, case.params)
    naive = check.reference_outputs(stem, arrays, case.params, target.np_dtype)
    mags = check.magnitudes(stem, arrays, case.params)
    for name, g, r, n, mag in zip(("out", "final_state"), got, ref, naive, mags, strict=True):
        verdict = judge(g, r, n, out_dtype=check.output_dtype(g, target), kind="output",
                        backend=target.backend.name, component=stem, dtype=target.dtype,
                        magnitude=mag)
        check.settle(verdict, target, stem, "property-two_calls", name,
                      Case(case.arrays, dict(case.params, split_at=m)))


@given(case=COMPONENT.cases(), data=st.data())
def test_a_carried_state_equals_one_pass(target, case, data):
    """Decode with a state: [0, m) then [m, T) from the first call's final_state is one pass."""
    t = case.arrays["q"].shape[1]
    if t < 2:
        return
    check_two_calls(target, STEM, case, data.draw(st.integers(1, t - 1)))
