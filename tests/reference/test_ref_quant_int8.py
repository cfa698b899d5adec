"""INT8 reference: hand-derived codes (ties to even, no -128, zero rows), and
torch.quantize_per_channel as an external oracle away from ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmspec.reference import dequant_int8, quant_int8
from lmspec.spec._quant import QUOTIENT_MARGIN


def test_hand_values_ties_to_even_and_symmetric_range():
    # row max 127: scale exactly 1, so every quotient is the value itself
    x = np.array([[127.0, -63.5, 0.5, 1.5, -2.5, -127.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    codes, scales = quant_int8(x)
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    np.testing.assert_array_equal(codes, [[127, -64, 0, 2, -2, -127], [0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(scales, [1.0, 1.0])  # an all-zero row: scale 1
    # -128 is never produced: the grid is symmetric
    codes, scales = quant_int8(np.array([-3.0, 3.0, 1.0]))
    np.testing.assert_array_equal(codes, [-127, 127, 42])  # 1 / (3 / 127) = 42.33
    assert scales == np.float32(3.0 / 127)


def test_scale_is_the_float32_rounding_of_amax_over_127():
    x = np.array([[0.1, -0.3], [1e-3, 2e-3]])
    _, scales = quant_int8(x)
    np.testing.assert_array_equal(scales, np.float32(np.array([0.3, 2e-3]) / 127))
    _, tiny = quant_int8(np.array([1e-45]))  # underflows to 0 in float32: scale 1
    assert tiny == 1.0


@pytest.mark.parametrize("axis", [0, 1, -1, -2])
def test_axis_selects_the_reduced_axis(axis):
    x = np.random.default_rng(0).standard_normal((3, 5))
    codes, scales = quant_int8(x, axis=axis)
    assert scales.shape == tuple(np.delete(x.shape, axis % 2))
    amax = np.abs(x).max(axis=axis)
    np.testing.assert_array_equal(scales, np.float32(amax / 127))
    err = np.abs(dequant_int8(codes, scales, axis) - x)
    assert np.all(err <= np.expand_dims(scales, axis % 2) / 2 * (1 + 1e-6))


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_per_channel_codes_match_torch_quantize_per_channel():
    """torch's qint8 per-channel quantizer (round half to even of x * (1/scale), zero point 0)
    agrees away from the knife edge (torch multiplies by a float32 reciprocal)."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((16, 64)) * rng.uniform(0.01, 10, (16, 1))).astype(np.float32)
    codes, scales = quant_int8(w.astype(np.float64))
    q = torch.quantize_per_channel(torch.from_numpy(w), torch.from_numpy(scales.astype(
        np.float64)), torch.zeros(16, dtype=torch.int64), 0, torch.qint8).int_repr().numpy()
    y = w / scales[:, None].astype(np.float64)
    edge = np.abs(np.abs(y - np.floor(y)) - 0.5) <= 4 * QUOTIENT_MARGIN * np.abs(y)
    assert np.all((q == codes) | edge) and (q == codes).mean() > 0.99
