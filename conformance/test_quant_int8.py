"""Conformance of quant_int8: codes exact (knife-edge rule), scales by the float policy, error
inputs, and the spec's properties (grid round trip, ties to even, power-of-two scaling)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lmspec.conformance import _check as check
from lmspec.conformance import _quant as Q
from lmspec.reference import quant_int8 as ref_quant
from lmspec.reference.quant_int8 import int8_quotient, int8_round
from lmspec.spec import Case
from lmspec.spec import _strategies as S
from lmspec.spec.quant_int8 import COMPONENT, QMAX

STEM = COMPONENT.stem

_, _, test_errors = check.standard_tests(COMPONENT)
# properties: a quarter of the forward test's examples (the profile's budget), at least 2
PROPERTY = settings(max_examples=max(2, settings().max_examples // 4))


def _judge(target, case, arrays, outs, test="forward"):
    x, axis = arrays["x"], case.params["axis"]
    codes, scales = outs
    Q.expect_layout(target, STEM, case, "codes", codes, x.shape, np.int8, test)
    Q.expect_layout(target, STEM, case, "scales", scales, np.delete(x.shape, axis % x.ndim),
                    np.float32, test)
    Q.check_float(target, STEM, case, "scales", scales, ref_quant(x, axis=axis)[1], test)
    Q.check_codes(target, STEM, case, "codes", codes, int8_quotient(x, scales, axis),
                  int8_round, test)


@given(case=COMPONENT.cases())
def test_forward(target, case):
    got = Q.outputs(target, STEM, case)
    if got is not None:
        _judge(target, case, *got)


@st.composite
def _pinned_rows(draw, half: bool):
    """Rows of integer (or half-integer) multiples of 2**k, one element per row pinned to
    +-127 * 2**k, so that the scale is exactly 2**k and every quotient is exact."""
    rows, d = draw(st.integers(1, 4)), draw(st.integers(1, 9))
    k = draw(st.integers(-8, 6))  # 127 * 2**6 and 2**-9 stay normal float16 values
    rng = np.random.default_rng(draw(S.seeds()))
    j = rng.integers(-QMAX, QMAX + (0 if half else 1), (rows, d)).astype(np.float64)
    y = j + 0.5 if half else j
    y[np.arange(rows), rng.integers(0, d, rows)] = QMAX * rng.choice((-1.0, 1.0), rows)
    return y, k


@PROPERTY
@given(data=_pinned_rows(half=False))
def test_grid_values_requantize_exactly(target, data):
    """codes * 2**k with a row maximum of 127: scale exactly 2**k, codes back unchanged."""
    y, k = data
    case = Case({"x": np.ldexp(y, k)}, {"axis": -1})
    got = Q.outputs(target, STEM, case, "grid")
    if got is not None:
        codes, scales = got[1]
        Q.check_equal(target, STEM, case, "scales", scales, np.full(len(y), 2.0**k, np.float32),
                      "grid", "the scale of a grid row pinned at 127 * 2**k is 2**k")
        Q.check_codes(target, STEM, case, "codes", codes, y, int8_round, "grid", margin=0)


@PROPERTY
@given(data=_pinned_rows(half=True))
def test_midpoints_round_half_to_even(target, data):
    """(j + 1/2) * 2**k with the scale pinned at 2**k: exact ties, rounded to the even code."""
    y, k = data
    case = Case({"x": np.ldexp(y, k)}, {"axis": -1})
    got = Q.outputs(target, STEM, case, "midpoints")
    if got is not None:
        Q.check_codes(target, STEM, case, "codes", got[1][0], y, int8_round, "midpoints",
                      margin=0)


@PROPERTY
@given(case=COMPONENT.cases(), p=st.sampled_from((-2, -1, 1, 3)))
def test_power_of_two_scaling(target, case, p):
    """quant(x * 2**p): the same codes, scales times 2**p (all-zero slices keep scale 1)."""
    x = check.rounded(case, STEM, target.np_dtype)["x"]
    xs = np.ldexp(x, p)
    if not np.array_equal(np.ldexp(xs.astype(target.np_dtype).astype(np.float64), -p), x):
        return  # scaling left the dtype's normal range: not exact, nothing to compare
    axis = case.params["axis"]
    nonzero = np.max(np.abs(x), axis=axis, initial=0.0) > 0
    ra, rb = (ref_quant(v, axis=axis)[1][nonzero] for v in (x, xs))
    if not np.array_equal(rb, np.ldexp(ra.astype(np.float64), p).astype(np.float32)):
        return  # a subnormal scale (amax < 127 * 2**-126): its rounding does not scale
    a, b = (Q.outputs(target, STEM, Case({"x": v}, case.params), "pow2_scaling")
            for v in (x, xs))
    if a is None or b is None:
        return
    Q.check_equal(target, STEM, case, "codes", b[1][0], a[1][0], "pow2_scaling",
                  f"codes of x * 2**{p} equal the codes of x")
    Q.check_equal(target, STEM, case, "scales", b[1][1][nonzero],
                  np.ldexp(a[1][1][nonzero].astype(np.float64), p).astype(np.float32),
                  "pow2_scaling", f"scales of x * 2**{p} are the scales of x times 2**{p}")


@PROPERTY
@given(case=COMPONENT.cases())
def test_axis_is_a_transpose(target, case):
    """quant(x, axis=a) is quant(moveaxis(x, a, -1), axis=-1), moved back, exactly."""
    x, axis = case.arrays["x"], case.params["axis"]
    a = Q.outputs(target, STEM, case, "axis_transpose")
    b = Q.outputs(target, STEM, Case({"x": np.moveaxis(x, axis, -1)}, {"axis": -1}),
                  "axis_transpose")
    if a is None or b is None:
        return
    Q.check_equal(target, STEM, case, "codes", np.moveaxis(b[1][0], -1, axis), a[1][0],
                  "axis_transpose", "codes along an axis are the codes of the transpose")
    Q.check_equal(target, STEM, case, "scales", b[1][1], a[1][1], "axis_transpose",
                  "scales along an axis are the scales of the transpose")
