"""quant_matmul reference: hand-derived values, the nibble layout, agreement with quant_int4 /
quant_int8's dequantizers, and its x-gradient against finite differences."""

from __future__ import annotations

import numpy as np
from _refcheck import FD_SETTINGS, assert_close, fd_check
from hypothesis import given

from lmspec import reference as R
from lmspec.spec import Case
from lmspec.spec.quant_matmul import COMPONENT


def test_int4_hand_derived():
    """Byte 0x21: element 0 is the low nibble (1), element 1 the high one (2); zero 1, scale
    0.5: W = [0, 0.5], so y = 1 * 0 + 2 * 0.5."""
    y = R.quant_matmul(np.array([[1.0, 2.0]]), np.array([[0x21]], np.uint8),
                       np.array([[0.5]]), np.array([[1]], np.uint8), bits=4, group_size=2)
    assert_close(y, [[1.0]])


def test_int8_hand_derived_groups():
    """Two groups of two: W = [-127 * 0.25, 3 * 0.25, 2 * 2, -1 * 2]."""
    y = R.quant_matmul(np.array([[1.0, 4.0, 0.5, 1.0]]), np.array([[-127, 3, 2, -1]], np.int8),
                       np.array([[0.25, 2.0]]), None, bits=8, group_size=2)
    assert_close(y, [[-31.75 + 3.0 + 2.0 - 2.0]])


def test_equals_the_dequantizers_of_quant_int4_and_quant_int8():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((5, 64)), rng.standard_normal((7, 64))
    packed, scales, zeros = R.quant_int4(w, group_size=16)
    assert_close(R.quant_matmul(x, packed, scales, zeros, bits=4, group_size=16),
                 x @ R.dequant_int4(packed, scales, zeros, 16).T)
    codes, s8 = R.quant_int8(w, axis=-1)  # per output channel: scales (7,)
    assert_close(R.quant_matmul(x, codes, s8[:, None], None, bits=8, group_size=64),
                 x @ R.dequant_int8(codes, s8, -1).T)
    # and both are close to the float matmul: 4 bits of a normal weight, 8 bits much closer
    y = x @ w.T
    e4 = np.abs(R.quant_matmul(x, packed, scales, zeros, bits=4, group_size=16) - y).max()
    e8 = np.abs(R.quant_matmul(x, codes, s8[:, None], None, bits=8, group_size=64) - y).max()
    assert e8 < e4 < 0.2 * np.abs(y).max()


def test_packing_is_quant_int4s():
    rng = np.random.default_rng(1)
    q = rng.integers(0, 16, (3, 8)).astype(np.uint8)
    packed = R.pack_int4(q)
    assert np.array_equal(packed & 0x0F, q[:, 0::2]) and np.array_equal(packed >> 4, q[:, 1::2])
    x = np.eye(8)  # y = W^T: reads the codes back column by column
    y = R.quant_matmul(x, packed, np.ones((3, 1)), np.zeros((3, 1), np.uint8), bits=4,
                       group_size=8)
    assert_close(y.T, q)


@FD_SETTINGS
@given(case=COMPONENT.cases())
def test_vjp_matches_finite_differences(case):
    if case.params.get("mode") == "w8a8":  # straight-through: a convention, not the derivative
        return
    fd_check("quant_matmul", Case(case.arrays, case.params), {"x": 1e-6})


def test_w8a8_hand_derived():
    """x row amax 1.27: sx = fl32(0.01), codes [127, -50]; weight codes [2, 3], scale 0.5:
    acc = 254 - 150 = 104, y = 104 * sx * 0.5."""
    y = R.quant_matmul(np.array([[1.27, -0.5]]), np.array([[2, 3]], np.int8),
                       np.array([[0.5]]), None, bits=8, group_size=2, mode="w8a8")
    assert_close(y, [[104 * np.float64(np.float32(0.01)) * 0.5]])


def test_w8a8_is_per_token_int8_times_per_channel_int8():
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((6, 32)), rng.standard_normal((5, 32))
    x[2] *= 100.0  # a large token does not coarsen the others (per-token scales)
    wq, sw = R.quant_int8(w, axis=-1)
    xq, sx = R.quant_int8(x, axis=-1)
    y = R.quant_matmul(x, wq, sw[:, None], None, bits=8, group_size=32, mode="w8a8")
    assert_close(y, R.dequant_int8(xq, sx, -1) @ R.dequant_int8(wq, sw, -1).T)
    rel = np.abs(y - x @ w.T).max(axis=1) / np.abs(x @ w.T).max(axis=1)
    assert rel.max() < 0.05
