"""FP4 reference: the E2M1 grid, ties to even, MX (OCP v1.0) shared exponents computed by
hand, NVFP4's two-level scale, the packing; ml_dtypes' float4_e2m1fn cast as an oracle."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from lmspec.reference import dequant_fp4, quant_fp4, unpack_int4
from lmspec.reference._minifloat import E2M1, E4M3


def test_e2m1_grid_and_code_order():
    assert E2M1.values[:8].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert E2M1.values[8:].tolist() == [-0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
    # ml_dtypes' float4_e2m1fn holds the same 4-bit codes
    codes = np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn)
    np.testing.assert_array_equal(codes.astype(np.float64), E2M1.values)


def test_e2m1_ties_to_even_and_saturation():
    y = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -100.0, -0.1])
    np.testing.assert_array_equal(E2M1.encode(y), [0, 2, 2, 4, 4, 6, 6, 7, 15, 8])


def test_e2m1_codes_equal_the_ml_dtypes_cast():
    """ml_dtypes' float4_e2m1fn rounds to nearest even and saturates (no NaN to go to)."""
    y = np.random.default_rng(0).standard_normal(5000) * 3
    cast = y.astype(ml_dtypes.float4_e2m1fn).view(np.uint8)
    np.testing.assert_array_equal(E2M1.encode(y), cast)


def test_packing_is_int4s_low_nibble_first():
    x = np.array([[0.5, 1.0, -6.0, 0.0] + [0.0] * 28])
    codes, scales, t = quant_fp4(x, fmt="mxfp4")  # amax 6: floor(log2 6) - 2 = 0, X = 1
    assert scales.tolist() == [[127]] and t == 1.0
    assert codes[0, :2].tolist() == [0x21, 0x0F]  # (1, 2) and (15, 0), low nibble first


def test_mx_shared_exponent_by_hand():
    """OCP MX v1.0 6.3: X = 2**(floor(log2(amax)) - emax_elem), emax_elem = 2 for E2M1."""
    rows = {7.75: 127, 6.0: 127, 4.0: 127, 3.99: 126, 1.0: 125, 2.0**-100: 25}
    for amax, code in rows.items():
        x = np.zeros((1, 32))
        x[0, 3] = amax
        _, scales, _ = quant_fp4(x, fmt="mxfp4")
        assert scales[0, 0] == code == math.floor(math.log2(amax)) - 2 + 127
    _, scales, _ = quant_fp4(np.zeros((1, 32)), fmt="mxfp4")  # zero block: clamp at -127
    assert scales[0, 0] == 0


def test_mx_block_maxima_above_six_saturate():
    x = np.zeros((1, 32))
    x[0, :4] = [7.75, 6.5, 5.5, -7.0]  # X = 1: 7.75 -> 6, 6.5 -> 6, 5.5 -> 6 (nearest), -6
    codes, scales, t = quant_fp4(x, fmt="mxfp4")
    np.testing.assert_array_equal(unpack_int4(codes)[0, :4], [7, 7, 7, 15])
    np.testing.assert_array_equal(dequant_fp4(codes, scales, t, "mxfp4")[0, :4], [6, 6, 6, -6])


def test_nvfp4_two_level_scale_by_hand():
    x = np.zeros((1, 32))
    x[0, :3] = [12.0, -3.0, 1.0]  # block 0: amax 12
    x[0, 16] = 2688.0  # block 1 holds the tensor's amax: t = 2688 / (6 * 448) = 1
    codes, scales, t = quant_fp4(x, fmt="nvfp4")
    assert t == 1.0
    # block scales E4M3(12 / 6) = 2.0 (0x40) and E4M3(2688 / 6) = 448 (0x7E)
    np.testing.assert_array_equal(scales, [[0x40, 0x7E]])
    np.testing.assert_array_equal(unpack_int4(codes)[0, [0, 1, 2, 16]], [7, 11, 1, 7])
    np.testing.assert_array_equal(dequant_fp4(codes, scales, t, "nvfp4")[0, :3], [12, -3, 1])


def test_nvfp4_static_tensor_scale_saturates_block_scales():
    x = np.full((1, 16), 100.0)
    codes, scales, t = quant_fp4(x, fmt="nvfp4", tensor_scale=2.0**-10)
    assert t == 2.0**-10 and scales[0, 0] == 0x7E  # 100 / (6 * 2**-10) = 17067 -> 448
    assert np.all(unpack_int4(codes) == 7)  # 100 / (448 * 2**-10) = 228 -> 6


def test_nvfp4_zero_block_gets_code_zero():
    x = np.zeros((1, 32))
    x[0, 16:] = 1.0
    codes, scales, _ = quant_fp4(x, fmt="nvfp4")
    assert scales[0, 0] == 0 and not np.any(unpack_int4(codes)[0, :16])


def test_e2m1_per_tensor_and_dequantization_error():
    x = np.random.default_rng(1).standard_normal((4, 64))
    for fmt in ("e2m1", "mxfp4", "nvfp4"):
        codes, scales, t = quant_fp4(x, fmt=fmt)
        err = np.abs(dequant_fp4(codes, scales, t, fmt) - x)
        # E2M1's worst relative half-step is 1/6 (between 4 and 6), plus MX's saturation
        bound = {"e2m1": np.abs(x).max() / 6, "mxfp4": 2 * np.abs(x).max() / 6,
                 "nvfp4": np.abs(x).max() / 6 * 1.07}[fmt]
        assert err.max() <= bound, (fmt, err.max(), bound)
    _, s, _ = quant_fp4(x, fmt="e2m1")
    assert s == np.float32(np.abs(x).max() / 6)
    assert E4M3.max == 448.0


def test_an_e8m0_cast_would_round_the_mx_scale_up():
    """Why the reference computes the shared exponent itself: a float8_e8m0fnu cast of
    amax / 4 rounds to nearest (1.5 -> 2, 7.75 / 4 -> 2), OCP's rule takes the floor (1)."""
    cast = np.array([1.5, 7.75 / 4]).astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)
    assert cast.tolist() == [128, 128]
    x = np.zeros((2, 32))
    x[:, 0] = [6.0, 7.75]  # amax / 4 = 1.5 and 1.9375
    assert quant_fp4(x, fmt="mxfp4")[1].ravel().tolist() == [127, 127]
