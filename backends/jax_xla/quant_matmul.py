"""Weight-only quantized matmul in JAX: dequantize the INT4/INT8 weight to float32, one dot."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lmspec.backends.jax_xla._common import F32, einsum
from lmspec.spec.quant_matmul import check_args


def dequantize(packed, scales, zeros, bits: int, group_size: int) -> jax.Array:
    """W (N, K) float32; int4 codes unpacked low nibble first."""
    if bits == 4:
        p = packed.astype(jnp.int32)  # (N, K/2)
        q = jnp.stack((p & 0x0F, p >> 4), axis=-1).reshape(p.shape[0], -1)  # (N, K)
        q = q - jnp.repeat(zeros.astype(jnp.int32), group_size, axis=1)
    else:
        q = packed.astype(jnp.int32)
    return q.astype(F32) * jnp.repeat(scales.astype(F32), group_size, axis=1)


@functools.partial(jax.jit, static_argnames=("bits", "group_size"))
def _quant_matmul(x, packed, scales, zeros, bits: int, group_size: int):
    w = dequantize(packed, scales, zeros, bits, group_size)
    return einsum("mk,nk->mn", x, w).astype(x.dtype)  # (M, N), float32 accumulation


def quant_matmul(x, packed, scales, zeros=None, *, bits: int = 4, group_size: int = 128,
                 mode: str = "weight_only"):
    check_args(x, packed, scales, zeros, bits=bits, group_size=group_size, mode=mode)
    if mode == "w8a8":
        # the spec's activation codes need the quotient x / sx exactly (float64); this
        # backend keeps x64 off, and a float32 quotient rounds the other way at knife edges
        raise NotImplementedError("jax_xla: quant_matmul mode='w8a8' is not implemented")
    return _quant_matmul(x, packed, scales, zeros, bits=bits, group_size=group_size)
