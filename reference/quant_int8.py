"""Symmetric absmax INT8 quantization reference (LLM.int8(), SmoothQuant): codes in [-127, 127]."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import f
from lmspec.spec.quant_int8 import QMAX, check_args


def int8_scales(x, axis: int = -1) -> np.ndarray:
    """fl32(max|x| / 127) per slice along ``axis`` (axis removed); 1 where that is 0."""
    amax = np.max(np.abs(np.asarray(x, np.float64)), axis=axis, initial=0.0)  # exact
    s = (amax / QMAX).astype(np.float32)
    return np.where(s > 0, s, np.float32(1.0)).astype(np.float32)


def int8_round(y) -> np.ndarray:
    """Codes of quotients ``y = x / scale``: round half to even, clip to [-127, 127]."""
    return np.clip(np.rint(np.asarray(y, np.float64)), -QMAX, QMAX).astype(np.int8)


def int8_quotient(x, scales, axis: int = -1) -> np.ndarray:
    """The exact ``x / scale`` (float64) that ``int8_round`` maps to codes."""
    x = np.asarray(x, np.float64)
    return x / np.expand_dims(np.asarray(scales, np.float64), axis % x.ndim)


def quant_int8(x, *, axis=-1):
    check_args(x, axis=axis)
    scales = int8_scales(x, axis)
    return int8_round(int8_quotient(x, scales, axis)), scales


def dequant_int8(codes, scales, axis: int = -1) -> np.ndarray:
    """``codes * scale`` in the compute dtype (exact in float64); ``scales`` has ``axis``
    removed, as ``quant_int8`` returns it."""
    codes = np.asarray(codes)
    s = np.expand_dims(np.asarray(scales, np.float64), axis % codes.ndim)
    return f(codes.astype(np.float64) * s)


__all__ = ["dequant_int8", "quant_int8"]
