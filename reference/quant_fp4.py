"""FP4 E2M1 quantization reference: per-tensor E2M1, OCP MXFP4 (E8M0 scale per 32, computed
here from the MX spec), NVIDIA NVFP4 (E4M3 scale per 16 and a float32 tensor scale)."""

from __future__ import annotations

import numpy as np

from lmspec.reference._minifloat import E2M1, E4M3, floor_log2
from lmspec.reference._numerics import f
from lmspec.reference.quant_int4 import pack_int4, unpack_int4
from lmspec.spec.quant_fp4 import BLOCK, E2M1_MAX, E4M3_MAX, E8M0_BIAS, MX_EMAX, check_args


def _blocks(x, fmt: str) -> np.ndarray:
    """(..., D) -> (..., D/block, block)."""
    x = np.asarray(x, np.float64)
    return x.reshape(x.shape[:-1] + (x.shape[-1] // BLOCK[fmt], BLOCK[fmt]))


def _nonzero_or_one(s) -> np.ndarray:
    s = np.asarray(s, np.float64).astype(np.float32)
    return np.where(s > 0, s, np.float32(1.0)).astype(np.float32)


def mx_exponent_codes(x) -> np.ndarray:
    """E8M0 codes: floor(log2(block amax)) - 2 + 127, clamped to [0, 254]; 0 for a zero block."""
    amax = np.abs(_blocks(x, "mxfp4")).max(axis=-1, initial=0.0)
    e = np.where(amax > 0, floor_log2(np.where(amax > 0, amax, 1.0)) - MX_EMAX, -E8M0_BIAS)
    return (np.clip(e, -E8M0_BIAS, E8M0_BIAS) + E8M0_BIAS).astype(np.uint8)


def nv_tensor_scale(x, tensor_scale=None) -> np.ndarray:
    if tensor_scale is not None:
        return np.asarray(tensor_scale, np.float64).astype(np.float32)
    amax = np.abs(np.asarray(x, np.float64)).max(initial=0.0)
    return _nonzero_or_one(amax / (E2M1_MAX * E4M3_MAX))


def nv_block_quotient(x, tensor_scale) -> np.ndarray:
    """The exact ``block_amax / (6 t)`` that E4M3 rounds to the block scale."""
    amax = np.abs(_blocks(x, "nvfp4")).max(axis=-1, initial=0.0)
    return amax / (E2M1_MAX * np.float64(tensor_scale))


def block_scale_values(scales, tensor_scale, fmt: str) -> np.ndarray:
    """float64 scale of every block (tensor scale included): (..., D/block), or () for e2m1."""
    t = np.float64(tensor_scale)
    if fmt == "e2m1":
        return np.asarray(scales, np.float64) * t
    if fmt == "mxfp4":
        return np.ldexp(1.0, np.asarray(scales).astype(np.int64) - E8M0_BIAS) * t
    return E4M3.decode(scales) * t


def fp4_quotient(x, scales, tensor_scale, fmt: str) -> np.ndarray:
    """The exact ``x / (block scale * tensor scale)``, unpacked (..., D); 0 where the block
    scale is 0 (NVFP4's zero blocks: code 0)."""
    x = np.asarray(x, np.float64)
    s = block_scale_values(scales, tensor_scale, fmt)
    if fmt == "e2m1":
        return x / s
    s = np.repeat(s, BLOCK[fmt], axis=-1)
    return np.divide(x, s, out=np.zeros_like(x), where=s > 0)


def quant_fp4(x, *, fmt="mxfp4", tensor_scale=None):
    check_args(x, fmt=fmt, tensor_scale=tensor_scale)
    t = np.float32(1.0)
    if fmt == "e2m1":
        scales = _nonzero_or_one(np.abs(np.asarray(x, np.float64)).max(initial=0.0) / E2M1_MAX)
    elif fmt == "mxfp4":
        scales = mx_exponent_codes(x)
    else:
        t = nv_tensor_scale(x, tensor_scale)
        scales = E4M3.encode(nv_block_quotient(x, t))
    codes = E2M1.encode(fp4_quotient(x, scales, t, fmt))
    return pack_int4(codes), scales, np.asarray(t, np.float32)


def dequant_fp4(codes, scales, tensor_scale=1.0, fmt: str = "mxfp4") -> np.ndarray:
    """``value(codes) * block scale * tensor_scale``, (..., D), in the compute dtype."""
    v = E2M1.decode(unpack_int4(codes))
    s = block_scale_values(scales, tensor_scale, fmt)
    return f(v * (s if fmt == "e2m1" else np.repeat(s, BLOCK[fmt], axis=-1)))


__all__ = ["dequant_fp4", "quant_fp4"]
