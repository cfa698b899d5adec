"""Attention over an INT8 / FP8 KV cache quantized per (token, head), in JAX: the jax quantizers
of quant_int8 / quant_fp8 (float32 quotients), dequantization into q's dtype, then sdpa."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lmspec.backends.jax_xla._quant import fp8_values, lift
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
    if np.asarray(v).size and np.abs(np.asarray(v).astype(np.float32)).max() < 2.0**-60:
        # a V so small that its dequantized values (and the output) are float32 subnormals,
        # which XLA's CPU runtime flushes to zero: attend over V * 2**64 (the output is
        # linear in V), exactly lifted (_quant.lift), and bring the output back down
        codes, scales = _quantize(v, fmt)
        vals = codes.astype(jnp.float32) if fmt == "int8" else fp8_values(codes, fmt)
        v_hat = (vals * lift(scales)[..., None]).astype(q.dtype)
        out = sdpa(q, k_hat, v_hat, causal=causal, scale=scale)[0]
        return _unlift_round(out.astype(jnp.float32)).astype(q.dtype)
    v_hat = _dequantize(*_quantize(v, fmt), fmt, q.dtype)
    return sdpa(q, k_hat, v_hat, causal=causal, scale=scale)[0]


@jax.jit
def _unlift_round(y):
    """float32 ``y * 2**-64``, rounded once to the nearest float32 (subnormals included: built
    from their bits, as XLA's CPU runtime flushes subnormal results)."""
    n = jnp.round(jnp.abs(y) * jnp.float32(2.0**85)).astype(jnp.int32)  # 2**-149 ulps
    sub = lax.bitcast_convert_type(n | jnp.where(y < 0, jnp.int32(-(2**31)), 0), jnp.float32)
    return jnp.where(jnp.abs(y) >= jnp.float32(2.0**-62), y * jnp.float32(2.0**-64), sub)
