"""Conformance of quant_fp8: codes exact (knife-edge rule), scales by the float policy, error
inputs, and the spec's properties (grid round trip, ties to even, saturation, power-of-two
scaling, one tile is per-token and one block per-tensor)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmspec.conformance import _check as check
from lmspec.conformance import _quant as Q
from lmspec.reference import dequant_fp8
from lmspec.reference import quant_fp8 as ref_quant
from lmspec.reference._minifloat import FORMATS
from lmspec.reference.quant_fp8 import fp8_quotient
from lmspec.spec import Case
from lmspec.spec import _strategies as S
from lmspec.spec.quant_fp8 import COMPONENT, FMT_MAX, scales_shape

STEM = COMPONENT.stem

_, _, test_errors = check.standard_tests(COMPONENT)
# properties: a quarter of the forward test's examples (the profile's budget), at least 2
PROPERTY = settings(max_examples=max(2, settings().max_examples // 4))


def _judge(target, case, arrays, outs, test="forward"):
    x, p = arrays["x"], case.params
    codes, scales = outs
    Q.expect_layout(target, STEM, case, "codes", codes, x.shape, np.uint8, test)
    Q.expect_layout(target, STEM, case, "scales", scales, scales_shape(x.shape,
                    p["granularity"]), np.float32, test)
    Q.check_float(target, STEM, case, "scales", scales, ref_quant(x, arrays["scale"], **p)[1],
                  test)
    Q.check_codes(target, STEM, case, "codes", codes,
                  fp8_quotient(x, scales, p["granularity"]), FORMATS[p["fmt"]].encode, test)


@given(case=COMPONENT.cases())
def test_forward(target, case):
    got = Q.outputs(target, STEM, case)
    if got is not None:
        _judge(target, case, *got)


@st.composite
def _pinned_rows(draw, midpoints: bool, fmt: str):
    """Rows of grid values (or midpoints between neighbours) times 2**k, each row pinned at
    +-max * 2**k: per-token scale exactly 2**k, every quotient exact in float32 (and in the
    dtypes under test, where the test checks it)."""
    grid = FORMATS[fmt].values[: FORMATS[fmt].max_code + 1]  # non-negative, ascending
    rows, d = draw(st.integers(1, 3)), draw(st.integers(2, 9))
    k = draw(st.integers(-5, 5) if fmt == "e4m3" else st.integers(-4, 0))
    rng = np.random.default_rng(draw(S.seeds()))
    i = rng.integers(0, len(grid) - 1, (rows, d))
    y = (grid[i] + grid[i + 1]) / 2 if midpoints else grid[i]
    y = y * rng.choice((-1.0, 1.0), (rows, d))
    y[np.arange(rows), rng.integers(0, d, rows)] = FMT_MAX[fmt] * rng.choice((-1.0, 1.0), rows)
    return y, k, fmt, draw(st.booleans())


def _exact_check(target, data, test):
    y, k, fmt, pow2 = data
    x = np.ldexp(y, k)
    if not np.array_equal(x.astype(target.np_dtype).astype(np.float64), x):
        return  # not representable in this dtype (float16's range): nothing exact to check
    case = Case({"x": x, "scale": None}, {"fmt": fmt, "granularity": "token",
                                          "pow2_scale": pow2})
    got = Q.outputs(target, STEM, case, test)
    if got is None:
        return
    codes, scales = got[1]
    Q.check_equal(target, STEM, case, "scales", scales, np.full(len(y), 2.0**k, np.float32),
                  test, f"the scale of a row pinned at max * 2**{k} is 2**{k}")
    Q.check_codes(target, STEM, case, "codes", codes, y, FORMATS[fmt].encode, test, margin=0)


@PROPERTY
@given(case=COMPONENT.cases())
def test_dequantized_values_requantize_to_the_same_codes(target, case):
    """value(codes) * scale, given back with the same scales as a static scale, gives the same
    codes: dequantized values lie on the grid (their rounding to the dtype under test, at most
    2**-8 relative, is far from any midpoint, 2**-4 relative away in E4M3)."""
    got = Q.outputs(target, STEM, case, "roundtrip")
    if got is None:
        return
    codes, scales = got[1]
    g, fmt = case.params["granularity"], case.params["fmt"]
    x = dequant_fp8(codes, scales, fmt, g)
    if np.any(np.abs(x.astype(target.np_dtype).astype(np.float64) - x) > 2.0**-8 * np.abs(x)):
        return  # values below the dtype's normal range (a subnormal scale): the premise fails
    again = Case({"x": x, "scale": scales.astype(np.float64)},
                 {"fmt": fmt, "granularity": g, "pow2_scale": False})
    got = Q.outputs(target, STEM, again, "roundtrip")
    if got is not None:
        Q.check_equal(target, STEM, case, "codes", got[1][0], codes, "roundtrip",
                      "dequantized values requantize (same scales) to the same codes")


@pytest.mark.parametrize("fmt", tuple(FMT_MAX))
@PROPERTY
@given(data=st.data())
def test_grid_values_requantize_exactly(target, fmt, data):
    """Dequantized values (grid values times a power-of-two scale) give back their codes."""
    _exact_check(target, data.draw(_pinned_rows(False, fmt)), "grid")


@pytest.mark.parametrize("fmt", tuple(FMT_MAX))
@PROPERTY
@given(data=st.data())
def test_midpoints_round_half_to_even(target, fmt, data):
    """An exact midpoint between two neighbours rounds to the one with the even mantissa."""
    _exact_check(target, data.draw(_pinned_rows(True, fmt)), "midpoints")


@PROPERTY
@given(fmt=st.sampled_from(tuple(FMT_MAX)), seed=S.seeds())
def test_saturation_at_the_format_max(target, fmt, seed):
    """With a static scale 1, values beyond the format's max (the midpoint above it, where a
    plain cast gives NaN or inf, and further) quantize to +-max, never NaN or inf."""
    top = FMT_MAX[fmt]
    beyond = (464.0, 480.0, 500.0, 1e4) if fmt == "e4m3" else (61440.0, 65504.0)
    rng = np.random.default_rng(seed)
    x = rng.choice(beyond, (2, 6)) * rng.choice((-1.0, 1.0), (2, 6))
    x[0, 0] = top / 3
    case = Case({"x": x, "scale": np.array(1.0)}, {"fmt": fmt, "granularity": "tensor"})
    got = Q.outputs(target, STEM, case, "saturation")
    if got is not None:
        Q.check_codes(target, STEM, case, "codes", got[1][0], x, FORMATS[fmt].encode,
                      "saturation", margin=0)


@PROPERTY
@given(case=COMPONENT.cases(), p=st.sampled_from((-2, -1, 1, 3)))
def test_power_of_two_scaling(target, case, p):
    """quant(x * 2**p) (a static scale times 2**p too): the same codes, scales times 2**p
    (all-zero groups keep scale 1)."""
    arrays = check.rounded(case, STEM, target.np_dtype)
    x, s = arrays["x"], arrays["scale"]
    xs, ss = np.ldexp(x, p), None if s is None else np.ldexp(s, p)
    for v, w in ((x, xs), (s, ss)):
        if v is not None and not np.array_equal(
                np.ldexp(w.astype(target.np_dtype).astype(np.float64), -p), v):
            return  # scaling left the dtype's normal range: not exact
    ra, rb = (ref_quant(v, t, **case.params)[1] for v, t in ((x, s), (xs, ss)))
    keep = (ra != 1) | (s is not None)
    if not np.array_equal(rb[keep], np.ldexp(ra[keep].astype(np.float64), p).astype(np.float32)):
        return  # a subnormal scale (amax < max * 2**-126): its rounding does not scale
    a, b = (Q.outputs(target, STEM, Case({"x": v, "scale": t}, case.params), "pow2_scaling")
            for v, t in ((x, s), (xs, ss)))
    if a is None or b is None:
        return
    Q.check_equal(target, STEM, case, "codes", b[1][0], a[1][0], "pow2_scaling",
                  f"codes of x * 2**{p} equal the codes of x")
    nonzero = (a[1][1] != 1) | (s is not None)
    Q.check_equal(target, STEM, case, "scales", b[1][1][nonzero],
                  np.ldexp(a[1][1][nonzero].astype(np.float64), p).astype(np.float32),
                  "pow2_scaling", f"scales of x * 2**{p} are the scales of x times 2**{p}")


@PROPERTY
@given(x=st.tuples(st.integers(1, 4), st.sampled_from((1, 17, 128))).flatmap(
    lambda s: S.float_arrays(s)), fmt=st.sampled_from(tuple(FMT_MAX)), pow2=st.booleans())
def test_one_tile_is_per_token_and_one_block_per_tensor(target, x, fmt, pow2):
    """Rows of at most 128: 1x128 tiles are per-token scaling; a weight within one 128x128
    block is per-tensor scaling (same codes, same scales)."""
    def run(granularity):
        case = Case({"x": x, "scale": None}, {"fmt": fmt, "granularity": granularity,
                                              "pow2_scale": pow2})
        return case, Q.outputs(target, STEM, case, "one_group")

    for (case, a), (_, b) in ((run("tile"), run("token")), (run("block"), run("tensor"))):
        if a is None or b is None:
            return
        Q.check_equal(target, STEM, case, "codes", a[1][0], b[1][0], "one_group",
                      "codes of a single tile/block equal per-token/per-tensor codes")
        Q.check_equal(target, STEM, case, "scales", a[1][1].reshape(b[1][1].shape), b[1][1],
                      "one_group", "scales of a single tile/block are the row/tensor scales")
