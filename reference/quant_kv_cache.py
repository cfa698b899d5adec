"""Quantized KV cache reference: quant_int8 / quant_fp8 per (token, head) rows, then sdpa."""

from __future__ import annotations

import numpy as np

from lmspec.reference._minifloat import FORMATS
from lmspec.reference._numerics import f
from lmspec.reference.quant_fp8 import fp8_quotient, fp8_scales
from lmspec.reference.quant_int8 import int8_quotient, int8_round, int8_scales
from lmspec.reference.sdpa import sdpa
from lmspec.spec.quant_kv_cache import check_args


def encode(y, fmt: str) -> np.ndarray:
    """Codes of quotients ``y = x / scale_kv``."""
    return int8_round(y) if fmt == "int8" else FORMATS[fmt].encode(y)


def kv_quotients(x, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """(quotients x / scale_kv (..., D) float64, scales (...,) float32), one scale per row."""
    if fmt == "int8":
        s = int8_scales(x, axis=-1)
        return int8_quotient(x, s, axis=-1), s
    s = fp8_scales(x, fmt, "token", False)
    return fp8_quotient(x, s, "token"), s


def kv_dequant(codes, scales, fmt: str) -> np.ndarray:
    """``value(code) * scale_kv`` in the compute dtype (exact in float64)."""
    vals = np.asarray(codes, np.float64) if fmt == "int8" else FORMATS[fmt].decode(codes)
    return f(vals * np.asarray(scales, np.float64)[..., None])


def attend(q, k_codes, k_scales, v_codes, v_scales, *, fmt, causal, scale):
    """sdpa over the dequantized cache: ``out`` (B, Tq, Hq, Dv)."""
    k_hat, v_hat = kv_dequant(k_codes, k_scales, fmt), kv_dequant(v_codes, v_scales, fmt)
    return sdpa(q, k_hat, v_hat, causal=causal, scale=scale)[0]


def quant_kv_cache(q, k, v, *, fmt="int8", causal=True, scale=None):
    check_args(q, k, v, fmt=fmt, causal=causal, scale=scale)
    (yk, sk), (yv, sv) = kv_quotients(k, fmt), kv_quotients(v, fmt)
    return attend(q, encode(yk, fmt), sk, encode(yv, fmt), sv, fmt=fmt, causal=causal,
                  scale=scale)
