"""Conformance of quant_int4: packed codes and zero points exact (knife-edge rule), scales by
the float policy, error inputs, and the spec's properties (grid round trip, ties to even,
power-of-two scaling, independent groups, per-channel rows)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lmspec.conformance import _check as check
from lmspec.conformance import _quant as Q
from lmspec.reference import quant_int4 as ref_quant
from lmspec.reference import unpack_int4
from lmspec.reference.quant_int4 import (
    int4_quotient,
    int4_round,
    int4_scales,
    int4_zero_quotient,
    int4_zeros,
)
from lmspec.spec import Case
from lmspec.spec import _strategies as S
from lmspec.spec.quant_int4 import COMPONENT, QMAX

STEM = COMPONENT.stem

_, _, test_errors = check.standard_tests(COMPONENT)
# properties: a quarter of the forward test's examples (the profile's budget), at least 2
PROPERTY = settings(max_examples=max(2, settings().max_examples // 4))


def _judge(target, case, w, outs, test="forward"):
    g = case.params["group_size"]
    (out, n), n_groups = w.shape, w.shape[1] // g
    packed, scales, zeros = outs
    Q.expect_layout(target, STEM, case, "packed", packed, (out, n // 2), np.uint8, test)
    Q.expect_layout(target, STEM, case, "scales", scales, (out, n_groups), np.float32, test)
    Q.expect_layout(target, STEM, case, "zeros", zeros, (out, n_groups), np.uint8, test)
    Q.check_float(target, STEM, case, "scales", scales, ref_quant(w, group_size=g)[1], test)
    lo = int4_scales(w, g)[1]  # the group's min(min(w), 0): exact
    Q.check_codes(target, STEM, case, "zeros", zeros, int4_zero_quotient(lo, scales),
                  int4_zeros, test)
    z = np.repeat(zeros.astype(np.float64), g, axis=1)  # (out, in)
    Q.check_codes(target, STEM, case, "packed", unpack_int4(packed),
                  int4_quotient(w, scales, g).reshape(out, n), lambda y: int4_round(y, z), test)


@given(case=COMPONENT.cases())
def test_forward(target, case):
    got = Q.outputs(target, STEM, case)
    if got is not None:
        _judge(target, case, got[0]["w"], got[1])


@st.composite
def _pinned_groups(draw, half: bool):
    """Groups (q - z) * 2**k with codes 0 and 15 present and zero point z: the range is exactly
    15 * 2**k, so the scale is 2**k, the zero z, and every quotient exact. ``half`` moves the
    other elements to (q - z + 1/2) * 2**k: exact ties."""
    out, g, n_groups = draw(st.integers(1, 3)), draw(st.sampled_from((2, 4, 8))), 2
    k = draw(st.integers(-8, 4))  # 15 * 2**4 and 2**-9 stay normal float16 values
    rng = np.random.default_rng(draw(S.seeds()))
    z = rng.integers(0, QMAX + 1, (out, n_groups, 1)).astype(np.float64)
    q = rng.integers(0, QMAX + (0 if half else 1), (out, n_groups, g)).astype(np.float64)
    y = q - z + (0.5 if half else 0.0)
    y[..., 0], y[..., 1] = -z[..., 0], QMAX - z[..., 0]  # codes 0 and 15 pin the range
    return y.reshape(out, n_groups * g), z[..., 0], g, k


def _exact_check(target, data, test):
    y, z, g, k = data
    case = Case({"w": np.ldexp(y, k)}, {"group_size": g})
    got = Q.outputs(target, STEM, case, test)
    if got is None:
        return
    packed, scales, zeros = got[1]
    Q.check_equal(target, STEM, case, "scales", scales, np.full(z.shape, 2.0**k, np.float32),
                  test, "a group spanning exactly 15 * 2**k has scale 2**k")
    Q.check_equal(target, STEM, case, "zeros", zeros, z.astype(np.uint8), test,
                  "a group whose minimum is -z * 2**k has zero point z")
    zz = np.repeat(z, g, axis=1)
    Q.check_codes(target, STEM, case, "packed", unpack_int4(packed), y,
                  lambda v: int4_round(v, zz), test, margin=0)


@PROPERTY
@given(data=_pinned_groups(half=False))
def test_grid_values_requantize_exactly(target, data):
    """Dequantized values ((q - z) * scale on a power-of-two scale) give back q, z and scale."""
    _exact_check(target, data, "grid")


@PROPERTY
@given(data=_pinned_groups(half=True))
def test_midpoints_round_half_to_even(target, data):
    """w / scale = an exact half-integer rounds to even before the zero point is added."""
    _exact_check(target, data, "midpoints")


@PROPERTY
@given(case=COMPONENT.cases(), p=st.sampled_from((-2, -1, 1, 3)))
def test_power_of_two_scaling(target, case, p):
    """quant(w * 2**p): the same codes and zeros, scales times 2**p (all-zero groups keep
    GPTQ's scale 2/15)."""
    w = check.rounded(case, STEM, target.np_dtype)["w"]
    ws = np.ldexp(w, p)
    if not np.array_equal(np.ldexp(ws.astype(target.np_dtype).astype(np.float64), -p), w):
        return  # scaling left the dtype's normal range: not exact
    g = case.params["group_size"]
    nonzero = np.abs(w).reshape(w.shape[0], w.shape[1] // g, g).max(axis=-1, initial=0.0) > 0
    ra, rb = (ref_quant(v, group_size=g)[1][nonzero] for v in (w, ws))
    if not np.array_equal(rb, np.ldexp(ra.astype(np.float64), p).astype(np.float32)):
        return  # a subnormal scale (range < 15 * 2**-126): its rounding does not scale
    a, b = (Q.outputs(target, STEM, Case({"w": v}, case.params), "pow2_scaling")
            for v in (w, ws))
    if a is None or b is None:
        return
    for i, name in ((0, "packed"), (2, "zeros")):
        Q.check_equal(target, STEM, case, name, b[1][i], a[1][i], "pow2_scaling",
                      f"{name} of w * 2**{p} equal those of w")
    Q.check_equal(target, STEM, case, "scales", b[1][1][nonzero],
                  np.ldexp(a[1][1][nonzero].astype(np.float64), p).astype(np.float32),
                  "pow2_scaling", f"scales of w * 2**{p} are those of w times 2**{p}")


@PROPERTY
@given(case=COMPONENT.cases())
def test_group_size_of_the_row_is_per_channel(target, case):
    """group_size = in: one scale and zero per row, and each row quantized alone is the same
    (rows are independent channels); with any group size, quantizing the first half of the
    groups alone gives the first half of the outputs (groups are independent)."""
    w = case.arrays["w"]
    out, n = w.shape
    if out == 0 or n == 0:
        return
    g = case.params["group_size"]
    pairs = [(Case({"w": w}, {"group_size": n}), Case({"w": w[-1:]}, {"group_size": n}),
              lambda o, i: o[i][-1:], "the last row alone")]
    half = (n // g // 2) * g
    if half and half % 2 == 0:
        pairs.append((case, Case({"w": w[:, :half]}, case.params),
                      lambda o, i: o[i][:, : (half // 2 if i == 0 else half // g)],
                      "the first half of the groups alone"))
    for whole, part, view, what in pairs:
        a = Q.outputs(target, STEM, whole, "per_channel")
        b = Q.outputs(target, STEM, part, "per_channel")
        if a is None or b is None:
            return
        for i, name in enumerate(("packed", "scales", "zeros")):
            Q.check_equal(target, STEM, part, name, b[1][i], view(a[1], i), "per_channel",
                          f"{what} quantizes as within the whole")
