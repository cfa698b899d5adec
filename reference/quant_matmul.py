"""Quantized matmul reference: dequantize the INT4/INT8 weight, then ``x @ W^T``; or W8A8:
per-token INT8 activations times per-channel INT8 weights, accumulated exactly in integers."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import f, matmul
from lmspec.reference.quant_int4 import dequant_int4
from lmspec.reference.quant_int8 import quant_int8
from lmspec.spec.quant_matmul import check_args


def dequant_weight(packed, scales, zeros=None, *, bits: int = 4, group_size: int = 128):
    """W (N, K) in the compute dtype: ``(q - zero) * scale`` (int4, quant_int4's dequantizer)
    or ``q * scale`` (int8, group-wise); exact in float64, rounded once to a lower dtype."""
    if bits == 4:
        return dequant_int4(np.asarray(packed).astype(np.uint8), scales, zeros, group_size)
    s = np.repeat(np.asarray(scales, np.float64), group_size, axis=1)  # (N, K)
    return f(np.asarray(packed, np.float64) * s)


def w8a8(x, codes, scales):
    """int8 x int8 -> exact integer accumulation, then ``acc * sx * sw`` rounded once."""
    xq, sx = quant_int8(np.asarray(x, np.float64), axis=-1)  # (M, K) codes, (M,) scales
    acc = np.asarray(xq, np.int64) @ np.asarray(codes, np.int64).T  # (M, N), exact
    sw = np.asarray(scales, np.float64)[:, 0]  # (N,)
    return f(acc * np.asarray(sx, np.float64)[:, None] * sw[None, :])


def quant_matmul(x, packed, scales, zeros=None, *, bits=4, group_size=128,
                 mode="weight_only"):
    check_args(x, packed, scales, zeros, bits=bits, group_size=group_size, mode=mode)
    if mode == "w8a8":
        return w8a8(x, packed, scales)
    w = dequant_weight(packed, scales, zeros, bits=bits, group_size=group_size)
    return matmul(f(x), w.T)  # (M, N)


def quant_matmul_vjp(dy, x, packed, scales, zeros=None, *, bits=4, group_size=128,
                     mode="weight_only"):
    """Gradient with respect to x only: ``dx = dy @ W`` (w8a8: straight through)."""
    w = dequant_weight(packed, scales, zeros, bits=bits, group_size=group_size)
    return {"x": matmul(f(dy), w)}
