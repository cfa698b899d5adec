"""Conformance of quant_fp4: packed E2M1 codes and E4M3/E8M0 block scales exact (knife-edge
rule), float scales by the float policy, error inputs, and the spec's properties (grid round
trip, ties to even, saturation, MX scales from floor(log2 amax), power-of-two scaling)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmspec.conformance import _check as check
from lmspec.conformance import _quant as Q
from lmspec.reference import quant_fp4 as ref_quant
from lmspec.reference import unpack_int4
from lmspec.reference._minifloat import E2M1, E4M3
from lmspec.reference.quant_fp4 import fp4_quotient, nv_block_quotient
from lmspec.spec import Case
from lmspec.spec import _strategies as S
from lmspec.spec.quant_fp4 import BLOCK, COMPONENT, E8M0_BIAS, scales_shape

STEM = COMPONENT.stem
SCALE_DTYPE = {"e2m1": np.float32, "mxfp4": np.uint8, "nvfp4": np.uint8}

_, _, test_errors = check.standard_tests(COMPONENT)
# properties: a quarter of the forward test's examples (the profile's budget), at least 2
PROPERTY = settings(max_examples=max(2, settings().max_examples // 4))


def _judge(target, case, x, outs, test="forward"):
    fmt, ts = case.params["fmt"], case.params["tensor_scale"]
    codes, scales, t = outs
    Q.expect_layout(target, STEM, case, "codes", codes, x.shape[:-1] + (x.shape[-1] // 2,),
                    np.uint8, test)
    Q.expect_layout(target, STEM, case, "scales", scales, scales_shape(x.shape, fmt),
                    SCALE_DTYPE[fmt], test)
    Q.expect_layout(target, STEM, case, "tensor_scale", t, (), np.float32, test)
    _, ref_scales, ref_t = ref_quant(x, fmt=fmt, tensor_scale=ts)
    Q.check_float(target, STEM, case, "tensor_scale", t, ref_t, test)
    if fmt == "e2m1":
        Q.check_float(target, STEM, case, "scales", scales, ref_scales, test)
    elif fmt == "mxfp4":  # a power of two from the exact amax: no knife edge
        Q.check_equal(target, STEM, case, "scales", scales, ref_scales, test,
                      "E8M0 exponents are floor(log2(block amax)) - 2 + 127")
    else:  # the block scale's E4M3 code, judged on the backend's own tensor scale
        Q.check_codes(target, STEM, case, "scales", scales, nv_block_quotient(x, t),
                      E4M3.encode, test)
    Q.check_codes(target, STEM, case, "codes", unpack_int4(codes),
                  fp4_quotient(x, scales, t, fmt), E2M1.encode, test)


@given(case=COMPONENT.cases())
def test_forward(target, case):
    got = Q.outputs(target, STEM, case)
    if got is not None:
        _judge(target, case, got[0]["x"], got[1])


_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


@st.composite
def _pinned(draw, midpoints: bool, fmt: str):
    """E2M1 grid values (or midpoints) times an exact scale, each block pinned at +-6 x scale:
    e2m1 and mxfp4 scale 2**k, nvfp4 a static tensor scale 2**k and a block scale that is an
    E4M3 value; every quotient is exact. Returns (y, x, params, expected scales)."""
    rows, block = draw(st.integers(1, 2)), BLOCK[fmt] or 4
    d = block * draw(st.integers(1, 2))
    k = draw(st.integers(-4, 2))
    rng = np.random.default_rng(draw(S.seeds()))
    y = rng.choice(_MIDPOINTS if midpoints else E2M1.values[:8], (rows, d))
    y = y * rng.choice((-1.0, 1.0), (rows, d))
    y.reshape(rows, d // block, block)[..., 0] = 6.0 * rng.choice((-1.0, 1.0))
    if fmt == "e2m1":
        scale, expect = np.ldexp(1.0, k), np.float32(2.0**k)
    elif fmt == "mxfp4":
        scale, expect = np.ldexp(1.0, k), np.full((rows, d // 32), k + E8M0_BIAS, np.uint8)
    else:
        b = rng.integers(0x28, 0x48, (rows, d // 16)).astype(np.uint8)  # E4M3 in [1/8, 8]
        scale, expect = np.repeat(E4M3.decode(b), 16, axis=-1) * 2.0**k, b
    params = {"fmt": fmt, "tensor_scale": 2.0**k if fmt == "nvfp4" else None}
    return y, y * scale, params, expect


def _exact_check(target, data, test):
    y, x, params, expect = data
    if not np.array_equal(x.astype(target.np_dtype).astype(np.float64), x):
        return  # not representable in this dtype: nothing exact to check
    case = Case({"x": x}, params)
    got = Q.outputs(target, STEM, case, test)
    if got is None:
        return
    codes, scales, _ = got[1]
    Q.check_equal(target, STEM, case, "scales", scales, expect, test,
                  "blocks pinned at 6 x an exact scale get exactly that scale")
    Q.check_codes(target, STEM, case, "codes", unpack_int4(codes), y, E2M1.encode, test,
                  margin=0)


@pytest.mark.parametrize("fmt", tuple(BLOCK))
@PROPERTY
@given(data=st.data())
def test_grid_values_requantize_exactly(target, fmt, data):
    """Dequantized values (E2M1 values times an exact scale) give back their codes."""
    _exact_check(target, data.draw(_pinned(False, fmt)), "grid")


@pytest.mark.parametrize("fmt", tuple(BLOCK))
@PROPERTY
@given(data=st.data())
def test_midpoints_round_half_to_even(target, fmt, data):
    """Exact midpoints (0.25, 0.75, ..., 5) round to the even value: 0, 1, 1, 2, 2, 4, 4."""
    _exact_check(target, data.draw(_pinned(True, fmt)), "midpoints")


@PROPERTY
@given(seed=S.seeds(), k=st.integers(-3, 3))
def test_saturation(target, seed, k):
    """MXFP4: a block maximum in (6, 8) x 2**e saturates to 6 (the OCP rule's floor leaves
    amax / X in [4, 8)); NVFP4 with a too-small static tensor scale: block scales saturate at
    E4M3's 448 and elements at E2M1's 6, never NaN."""
    rng = np.random.default_rng(seed)
    mx = rng.choice((6.5, 7.0, 7.5, -7.0, 1.0, -0.5), (1, 32)) * 2.0**k
    mx[0, 0] = 7.5 * 2.0**k
    nv = rng.choice((1.0, -3.0, 100.0, 0.5), (1, 16)) * 2.0**k
    for x, params in ((mx, {"fmt": "mxfp4", "tensor_scale": None}),
                      (nv, {"fmt": "nvfp4", "tensor_scale": 2.0**-14})):
        case = Case({"x": x}, params)
        got = Q.outputs(target, STEM, case, "saturation")
        if got is None:
            return
        _judge(target, case, x, got[1], "saturation")


@PROPERTY
@given(x=st.tuples(st.integers(1, 3), st.sampled_from((32, 64))).flatmap(S.float_arrays))
def test_mx_scales_put_block_maxima_in_four_to_eight(target, x):
    """MXFP4's E8M0 scale X = 2**(floor(log2 amax) - 2): amax / X lies in [4, 8) for every
    non-zero block (unless the exponent clamps at -127)."""
    case = Case({"x": x}, {"fmt": "mxfp4", "tensor_scale": None})
    got = Q.outputs(target, STEM, case, "mx_scales")
    if got is None:
        return
    x, scales = got[0]["x"], got[1][1].astype(np.int64)
    amax = np.abs(x.reshape(*x.shape[:-1], -1, 32)).max(axis=-1, initial=0.0)
    ratio = amax / np.ldexp(1.0, scales - E8M0_BIAS)
    ok = (amax == 0) | (scales == 0) | ((ratio >= 4) & (ratio < 8))
    Q.check_equal(target, STEM, case, "scales", ok, np.ones_like(ok), "mx_scales",
                  "block amax / 2**(scale - 127) lies in [4, 8)")


@pytest.mark.parametrize("fmt", tuple(BLOCK))
@PROPERTY
@given(data=st.data(), p=st.sampled_from((-2, -1, 1, 3)))
def test_power_of_two_scaling(target, fmt, data, p):
    """quant(x * 2**p) (a static tensor scale times 2**p too): the same codes; e2m1 scales and
    nvfp4 tensor scales times 2**p, nvfp4 block scales unchanged, E8M0 exponents plus p."""
    case = data.draw(COMPONENT.cases().filter(lambda c: c.params["fmt"] == fmt))
    x, params = check.rounded(case, STEM, target.np_dtype)["x"], dict(case.params)
    xs = np.ldexp(x, p)
    if not np.array_equal(np.ldexp(xs.astype(target.np_dtype).astype(np.float64), -p), x):
        return  # scaling left the dtype's normal range: not exact
    a = Q.outputs(target, STEM, Case({"x": x}, params), "pow2_scaling")
    if params["tensor_scale"] is not None:
        params["tensor_scale"] = float(np.ldexp(params["tensor_scale"], p))
    b = Q.outputs(target, STEM, Case({"x": xs}, params), "pow2_scaling")
    if a is None or b is None or not np.any(x):
        return
    (ca, sa, ta), (cb, sb, tb) = a[1], b[1]
    if fmt == "mxfp4" and np.any((sa != 0) & (sa.astype(np.int64) + p < 1)):
        return  # an exponent near the clamp at -127
    Q.check_equal(target, STEM, case, "codes", cb, ca, "pow2_scaling",
                  f"codes of x * 2**{p} equal the codes of x")
    want_s = {"e2m1": lambda: np.ldexp(sa.astype(np.float64), p).astype(np.float32),
              "mxfp4": lambda: np.where(sa != 0, sa.astype(np.int64) + p, 0).astype(np.uint8),
              "nvfp4": lambda: sa}[fmt]()
    if fmt == "mxfp4":
        sb = np.where(sa != 0, sb, 0).astype(np.uint8)  # zero blocks stay at the clamp
    Q.check_equal(target, STEM, case, "scales", sb, want_s, "pow2_scaling",
                  f"scales of x * 2**{p} follow the scaling")
    want_t = np.ldexp(ta.astype(np.float64), p) if fmt == "nvfp4" else ta
    Q.check_equal(target, STEM, case, "tensor_scale", tb, np.float32(want_t), "pow2_scaling",
                  f"the tensor scale of x * 2**{p} follows the scaling")
