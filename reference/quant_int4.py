"""Group-wise asymmetric INT4 RTN reference (GPTQ's grid and zero point), packed two per byte."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import f
from lmspec.spec.quant_int4 import QMAX, check_args


def _groups(w, group_size: int) -> np.ndarray:
    w = np.asarray(w, np.float64)
    return w.reshape(w.shape[0], w.shape[1] // group_size, group_size)  # (out, G, g)


def int4_scales(w, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(scales float32, lo float64) per group, (out, in/g): the range [lo, hi] contains 0."""
    g = _groups(w, group_size)
    lo = np.minimum(g.min(axis=-1, initial=0.0), 0.0)
    hi = np.maximum(g.max(axis=-1, initial=0.0), 0.0)
    s = ((hi - lo) / QMAX).astype(np.float32)
    degenerate = s == 0  # all zero (or underflowing): GPTQ's [-1, 1]
    lo = np.where(degenerate, -1.0, lo)
    s = np.where(degenerate, np.float32(2.0 / QMAX), s).astype(np.float32)
    return s, lo


def int4_round(y, zeros) -> np.ndarray:
    """Codes of quotients ``y = w / scale`` given the zero points (broadcast): RNE, clip."""
    return np.clip(np.rint(np.asarray(y, np.float64)) + zeros, 0, QMAX).astype(np.uint8)


def int4_zero_quotient(lo, scales) -> np.ndarray:
    return -np.asarray(lo, np.float64) / np.asarray(scales, np.float64)


def int4_zeros(zq) -> np.ndarray:
    """Zero points of the quotients ``-lo / scale``: RNE, clip to [0, 15]."""
    return np.clip(np.rint(zq), 0, QMAX).astype(np.uint8)


def int4_quotient(w, scales, group_size: int) -> np.ndarray:
    """The exact ``w / scale`` per element, (out, G, g)."""
    return _groups(w, group_size) / np.asarray(scales, np.float64)[..., None]


def int4_codes_with(w, scales, zeros, group_size: int) -> np.ndarray:
    """Unpacked codes (out, in) of ``w`` on given per-group scales and zeros (GPTQ's column
    step: the group's scale and zero are fixed once, then every column is rounded on them)."""
    y = int4_quotient(w, scales, group_size)
    return int4_round(y, np.asarray(zeros, np.float64)[..., None]).reshape(np.shape(w))


def rtn_int4_codes(w, group_size: int = 128):
    """Unpacked RTN: (q uint8 (out, in), scales float32 (out, in/g), zeros uint8 (out, in/g)).

    The grid GPTQ and AWQ reuse: same scale and zero-point rule as ``quant_int4``.
    """
    shape = np.shape(w)
    if len(shape) != 2 or group_size < 1 or shape[1] % group_size:
        raise ValueError(f"w: expected (out, in) with in a multiple of group_size "
                         f"{group_size}, got shape {shape}")
    scales, lo = int4_scales(w, group_size)
    zeros = int4_zeros(int4_zero_quotient(lo, scales))
    return int4_codes_with(w, scales, zeros, group_size), scales, zeros


def pack_int4(q) -> np.ndarray:
    """(..., 2n) codes in [0, 15] -> (..., n) uint8: element 2j low nibble, 2j+1 high."""
    q = np.asarray(q).astype(np.uint8)
    if q.shape[-1] % 2:
        raise ValueError(f"q: expected an even last axis, got shape {q.shape}")
    if np.any(q > QMAX):
        raise ValueError("q: expected codes in [0, 15]")
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def unpack_int4(packed) -> np.ndarray:
    """(..., n) uint8 -> (..., 2n) codes: the inverse of ``pack_int4``."""
    p = np.asarray(packed).astype(np.uint8)
    q = np.empty(p.shape[:-1] + (2 * p.shape[-1],), np.uint8)
    q[..., 0::2] = p & 0x0F
    q[..., 1::2] = p >> 4
    return q


def quant_int4(w, *, group_size=128):
    check_args(w, group_size=group_size)
    q, scales, zeros = rtn_int4_codes(w, group_size)
    return pack_int4(q), scales, zeros


def dequant_int4(packed, scales, zeros, group_size: int = 128) -> np.ndarray:
    """(q - zero) * scale, (out, in), in the compute dtype (exact in float64)."""
    q = unpack_int4(packed).astype(np.float64)
    out, n = q.shape
    q = q.reshape(out, n // group_size, group_size)
    z = np.asarray(zeros, np.float64)[..., None]
    s = np.asarray(scales, np.float64)[..., None]
    return f(((q - z) * s).reshape(out, n))


__all__ = ["dequant_int4", "int4_codes_with", "pack_int4", "quant_int4", "rtn_int4_codes",
           "unpack_int4"]
