"""FP8 reference: hand-derived E4M3/E5M2 grid points, ties to even, saturation, power-of-two
and block scales; ml_dtypes, torch and jax float8 casts as oracles inside the finite range."""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

from lmspec.reference import dequant_fp8, quant_fp8
from lmspec.reference._minifloat import E4M3, E5M2

ONE = np.array(1.0)


def codes(x, fmt="e4m3"):
    return quant_fp8(np.asarray(x, np.float64), ONE, fmt=fmt)[0].tolist()


def test_e4m3_grid_points():
    # 2**-9 (smallest subnormal), 2**-6 (smallest normal), 1, 1.125, 448 (max); NaN = 0x7F
    assert codes([2.0**-9, 2.0**-6, 1.0, 1.125, 448.0]) == [0x01, 0x08, 0x38, 0x39, 0x7E]
    assert np.isnan(E4M3.decode(np.array([0x7F, 0xFF]))).all()
    assert E4M3.max == 448.0 and not np.isinf(E4M3.values).any()  # E4M3FN: no infinity


def test_e5m2_grid_points():
    assert codes([2.0**-16, 2.0**-14, 1.0, 57344.0], "e5m2") == [0x01, 0x04, 0x3C, 0x7B]
    assert E5M2.decode(np.array([0x7C, 0xFC])).tolist() == [np.inf, -np.inf]
    assert np.isnan(E5M2.decode(np.array([0x7D, 0x7E, 0x7F]))).all()


def test_ties_to_even_mantissa():
    # 1.0625 = (1 + 1.125) / 2 -> 1 (mantissa 000); 1.1875 = (1.125 + 1.25) / 2 -> 1.25 (010)
    assert codes([1.0625, 1.1875, -1.0625]) == [0x38, 0x3A, 0xB8]
    # subnormal tie: 1.5 * 2**-9 lies between 2**-9 (001) and 2**-8 (010) -> 010
    assert codes([1.5 * 2.0**-9, 0.5 * 2.0**-9]) == [0x02, 0x00]
    # E5M2: (1 + 1.25) / 2 -> 1 (00); (1.25 + 1.5) / 2 -> 1.5 (10)
    assert codes([1.125, 1.375], "e5m2") == [0x3C, 0x3E]


def test_explicit_saturation():
    """ml_dtypes' casts do not saturate (E4M3FN 480 -> NaN, E5M2 61440 -> inf); we do."""
    assert np.isnan(np.float64(480).astype(ml_dtypes.float8_e4m3fn))
    assert codes([464.0, 480.0, 1e4, -1e30]) == [0x7E, 0x7E, 0x7E, 0xFE]
    assert codes([61440.0, 1e9, -65504.0], "e5m2") == [0x7B, 0x7B, 0xFB]


def test_negative_zero_keeps_its_sign():
    assert codes([-1e-10, 0.0, -0.0]) == [0x80, 0x00, 0x80]


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_codes_equal_float8_casts_inside_the_range(fmt):
    """ml_dtypes, torch and jax (all round to nearest even) agree where |y| <= max."""
    rng = np.random.default_rng(0)
    top = {"e4m3": 448.0, "e5m2": 57344.0}[fmt]
    y = np.concatenate([rng.standard_normal(4000) * top / 8, rng.standard_normal(1000) * 2.0**-12,
                        (E4M3 if fmt == "e4m3" else E5M2).values[:120]]).astype(np.float32)
    y = np.clip(y, -top, top)
    ours = quant_fp8(y.astype(np.float64), ONE, fmt=fmt)[0]
    np_dt = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}[fmt]
    t_dt = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}[fmt]
    j_dt = {"e4m3": jnp.float8_e4m3fn, "e5m2": jnp.float8_e5m2}[fmt]
    np.testing.assert_array_equal(ours, y.astype(np_dt).view(np.uint8))
    np.testing.assert_array_equal(ours, torch.from_numpy(y).to(t_dt).view(torch.uint8).numpy())
    np.testing.assert_array_equal(ours, np.asarray(jnp.asarray(y).astype(j_dt)).view(np.uint8))


def test_scales_per_granularity():
    x = np.zeros((3, 130))
    x[0, 0], x[1, 129], x[2, 5] = 448.0, -896.0, 44.8
    _, s = quant_fp8(x, granularity="tensor")
    assert s.shape == () and s == 2.0
    _, s = quant_fp8(x, granularity="token")
    np.testing.assert_array_equal(s, np.float32([1.0, 2.0, 0.1]))
    _, s = quant_fp8(x, granularity="tile")  # tiles [0, 128) and the partial [128, 130)
    np.testing.assert_array_equal(s, np.float32([[1.0, 1.0], [1.0, 2.0], [0.1, 1.0]]))
    _, s = quant_fp8(np.pad(x, ((0, 127), (0, 0))), granularity="block")
    np.testing.assert_array_equal(s, np.float32([[1.0, 2.0], [1.0, 1.0]]))  # 257 x 130


def test_power_of_two_scale_rounds_up():
    x = np.array([[448.0 * 3, 1.0], [448.0, 1.0], [448.0 * 0.3, 0.0]])
    _, s = quant_fp8(x, granularity="token", pow2_scale=True)
    np.testing.assert_array_equal(s, [4.0, 1.0, 0.5])
    # DeepSeek-V3's float32 exp2(ceil(log2(s))) agrees away from exact powers of two
    s32 = np.float32(x[:, 0] / 448)
    np.testing.assert_array_equal(np.exp2(np.ceil(np.log2(s32))), s)


@pytest.mark.parametrize("granularity", ["tensor", "token", "tile", "block"])
def test_dequantized_error_is_within_half_a_grid_step(granularity):
    x = np.random.default_rng(1).standard_normal((130, 200))
    c, s = quant_fp8(x, granularity=granularity)
    err = np.abs(dequant_fp8(c, s, "e4m3", granularity) - x)
    # relative spacing of E4M3 is 2**-3 in the normal range: half a step is 1/16 of |x|
    _, s_max = quant_fp8(x, granularity="tensor")
    assert np.all(err <= np.abs(x) / 16 + 2.0**-10 * s_max)
