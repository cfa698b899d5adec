"""Attention over an INT8 / FP8 KV cache quantized per (token, head), in JAX: the jax quantizers
of quant_int8 / quant_fp8 (float32 quotients), dequantization into q's dtype, then sdpa."""

from __future__ import annotations

import jax.numpy as jnp

from lmspec.backends.jax_xla._quant import fp8_values
from lmspec.backends.jax_xla.quant_fp8 import quant_fp8
from lmspec.backends.jax_xla.quant_int8 import quant_int8
from lmspec.backends.jax_xla.sdpa import sdpa
from lmspec.spec.quant_kv_cache import check_args


def _quantize(x, fmt: str):
    if fmt == "int8":
        return quant_int8(x, axis=-1)
    return quant_fp8(x, fmt=fmt, granularity="token")


def _dequantize(codes, scales, fmt: str, dtype):
    vals = codes.astype(jnp.float32) if fmt == "int8" else fp8_values(codes, fmt)
    return (vals * scales[..., None]).astype(dtype)


def quant_kv_cache(q, k, v, *, fmt: str = "int8", causal: bool = True,
                   scale: float | None = None):
    check_args(q, k, v, fmt=fmt, causal=causal, scale=scale)
    k_hat = _dequantize(*_quantize(k, fmt), fmt, q.dtype)  # (B, Tk, Hkv, D)
    v_hat = _dequantize(*_quantize(v, fmt), fmt, q.dtype)
    return sdpa(q, k_hat, v_hat, causal=causal, scale=scale)[0]
