"""INT4 reference: hand-derived groups (zero point, ties to even, the range holding 0), the
packing layout, and GPTQ's Quantizer (transcribed in torch float32) as an oracle."""

from __future__ import annotations

import numpy as np
import torch

from lmspec.reference import (
    dequant_int4,
    pack_int4,
    quant_int4,
    rtn_int4_codes,
    unpack_int4,
)
from lmspec.reference.quant_int4 import int4_codes_with
from lmspec.spec._quant import QUOTIENT_MARGIN


def test_hand_values():
    # range [-4, 11] = 15: scale 1, zero 4; 2.5 and -1.5 are ties (to even: 2 and -2)
    w = np.array([[-4.0, 0.0, 1.0, 11.0]])
    q, scales, zeros = rtn_int4_codes(w, group_size=4)
    np.testing.assert_array_equal(q, [[0, 4, 5, 15]])
    np.testing.assert_array_equal(zeros, [[4]])
    np.testing.assert_array_equal(scales, [[1.0]])
    q, _, _ = rtn_int4_codes(np.array([[-4.0, 11.0, 2.5, -1.5]]), group_size=4)
    np.testing.assert_array_equal(q, [[0, 15, 6, 2]])  # 2.5 -> 2, -1.5 -> -2, plus zero 4


def test_the_range_always_holds_zero():
    """GPTQ's rule: an all-positive group still has min 0 (zero point 0); AutoAWQ's would
    take min = 1 and clip its zero point."""
    q, scales, zeros = rtn_int4_codes(np.array([[1.0, 2.0, 3.0, 4.0]]), group_size=4)
    assert scales[0, 0] == np.float32(4 / 15) and zeros[0, 0] == 0
    # 3.75, 7.4999996 (fl32(4/15) lies just above 4/15: not a tie), 11.25, 15
    np.testing.assert_array_equal(q, [[4, 7, 11, 15]])


def test_all_zero_group_uses_gptq_minus_one_to_one():
    q, scales, zeros = rtn_int4_codes(np.zeros((1, 4)), group_size=4)
    assert scales[0, 0] == np.float32(2 / 15)
    assert zeros[0, 0] == 7  # 1 / fl32(2/15) = 7.4999996: rounds to 7
    np.testing.assert_array_equal(q, [[7, 7, 7, 7]])
    assert not np.any(dequant_int4(pack_int4(q), scales, zeros, 4))


def test_packing_low_nibble_first():
    q = np.array([[1, 2, 3, 4, 15, 0]], np.uint8)
    np.testing.assert_array_equal(pack_int4(q), [[0x21, 0x43, 0x0F]])
    np.testing.assert_array_equal(unpack_int4(pack_int4(q)), q)
    # GPTQ's int32 qweight holds element i of 8 in bits 4i..4i+3: the same bytes, little-endian
    word = sum(int(v) << (4 * i) for i, v in enumerate([1, 2, 3, 4, 5, 6, 7, 8]))
    as_bytes = np.frombuffer(np.array([word], "<u4").tobytes(), np.uint8)
    np.testing.assert_array_equal(as_bytes, pack_int4(np.arange(1, 9, dtype=np.uint8)))


def _gptq_quantizer(w: torch.Tensor, group_size: int, maxq: int = 15):
    """GPTQ's Quantizer.find_params (sym=False, per group) and quantize, in float32."""
    rows = w.reshape(-1, group_size)
    xmin = torch.minimum(rows.min(1)[0], torch.zeros(1))
    xmax = torch.maximum(rows.max(1)[0], torch.zeros(1))
    tmp = (xmin == 0) & (xmax == 0)
    xmin[tmp], xmax[tmp] = -1, +1
    scale = (xmax - xmin) / maxq
    zero = torch.round(-xmin / scale)
    q = torch.clamp(torch.round(rows / scale[:, None]) + zero[:, None], 0, maxq)
    return q.reshape(w.shape), scale.reshape(w.shape[0], -1), zero.reshape(w.shape[0], -1)


def test_codes_match_gptq_quantizer_away_from_the_knife_edge():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 256)) * 0.02).astype(np.float32)
    q, scales, zeros = rtn_int4_codes(w.astype(np.float64), group_size=128)
    gq, gs, gz = (t.numpy() for t in _gptq_quantizer(torch.from_numpy(w), 128))
    np.testing.assert_allclose(scales, gs, rtol=2.4e-7)  # (max - min) rounded once or twice
    np.testing.assert_array_equal(zeros, gz)
    y = w.reshape(8, 2, 128) / scales[..., None].astype(np.float64)
    edge = (np.abs(np.abs(y - np.floor(y)) - 0.5) <= QUOTIENT_MARGIN * np.abs(y)).reshape(8, -1)
    assert np.all((q == gq) | edge)


def test_quant_int4_packs_rtn_and_dequantizes_within_half_a_step():
    w = np.random.default_rng(2).standard_normal((4, 64))
    packed, scales, zeros = quant_int4(w, group_size=32)
    q, s2, z2 = rtn_int4_codes(w, 32)
    np.testing.assert_array_equal(unpack_int4(packed), q)
    assert packed.shape == (4, 32) and scales.shape == (4, 2) and zeros.dtype == np.uint8
    err = np.abs(dequant_int4(packed, scales, zeros, 32) - w).reshape(4, 2, 32)
    assert np.all(err <= scales[..., None] / 2 * (1 + 1e-6))
    np.testing.assert_array_equal(int4_codes_with(w, scales, zeros, 32), q)
