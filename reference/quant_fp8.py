"""FP8 E4M3/E5M2 quantization reference: absmax scales per tensor, token, 1x128 tile or
128x128 block (DeepSeek-V3), optional power-of-two scale, RNE with explicit saturation."""

from __future__ import annotations

import numpy as np

from lmspec.reference._minifloat import FORMATS, ceil_pow2
from lmspec.reference._numerics import f
from lmspec.spec.quant_fp8 import BLOCK, FMT_MAX, TILE, check_args, scales_shape


def _group_sizes(shape: tuple[int, ...], granularity: str) -> tuple[int, ...]:
    """Extent of one tile or block along every axis of ``x``."""
    return (1,) * (len(shape) - 1) + (TILE,) if granularity == "tile" else (BLOCK, BLOCK)


def group_amax(x, granularity: str) -> np.ndarray:
    """max |x| per group, of shape ``scales_shape`` (0 for an empty group)."""
    a = np.abs(np.asarray(x, np.float64))
    if granularity == "tensor":
        return np.asarray(a.max(initial=0.0))
    if granularity == "token":
        return a.max(axis=-1, initial=0.0)
    g, n = _group_sizes(a.shape, granularity), scales_shape(a.shape, granularity)
    padded = np.zeros(tuple(k * s for k, s in zip(n, g)))  # zero-pad to whole groups
    padded[tuple(slice(0, s) for s in a.shape)] = a
    split = padded.reshape(tuple(v for k, s in zip(n, g) for v in (k, s)))
    return split.max(axis=tuple(range(1, 2 * a.ndim, 2)), initial=0.0)


def expand(scales, shape: tuple[int, ...], granularity: str) -> np.ndarray:
    """Per-group values broadcast back to every element of an input of ``shape``."""
    s = np.asarray(scales, np.float64)
    if granularity == "tensor":
        return np.broadcast_to(s, shape)
    if granularity == "token":
        return np.broadcast_to(s[..., None], shape)
    for axis, g in enumerate(_group_sizes(shape, granularity)):
        if g > 1:
            s = np.repeat(s, g, axis=axis)
    return s[tuple(slice(0, n) for n in shape)]


def fp8_scales(x, fmt: str, granularity: str, pow2_scale: bool) -> np.ndarray:
    s = (group_amax(x, granularity) / FMT_MAX[fmt]).astype(np.float32)
    s = np.where(s > 0, s, np.float32(1.0))
    return (ceil_pow2(s) if pow2_scale else s).astype(np.float32)


def fp8_quotient(x, scales, granularity: str) -> np.ndarray:
    """The exact ``x / scale`` per element."""
    x = np.asarray(x, np.float64)
    return x / expand(scales, x.shape, granularity)


def quant_fp8(x, scale=None, *, fmt="e4m3", granularity="tensor", pow2_scale=False):
    check_args(x, scale, fmt=fmt, granularity=granularity, pow2_scale=pow2_scale)
    if scale is None:
        scales = fp8_scales(x, fmt, granularity, pow2_scale)
    else:
        scales = np.asarray(scale, np.float64).astype(np.float32)
    return FORMATS[fmt].encode(fp8_quotient(x, scales, granularity)), scales


def dequant_fp8(codes, scales, fmt: str = "e4m3", granularity: str = "tensor") -> np.ndarray:
    """``value(codes) * scale`` in the compute dtype (exact in float64)."""
    v = FORMATS[fmt].decode(codes)
    return f(v * expand(scales, v.shape, granularity))


__all__ = ["dequant_fp8", "quant_fp8"]
