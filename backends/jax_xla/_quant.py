"""Shared pieces of the jax quantizers: true divisions by constants, exact power-of-two
helpers, saturating FP8 and E2M1 rounding, nibble packing."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

F32 = jnp.float32
FP8_DTYPES = {"e4m3": jnp.float8_e4m3fn, "e5m2": jnp.float8_e5m2}
FP8_MAX = {"e4m3": 448.0, "e5m2": 57344.0}
E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)  # between the grid's neighbours


def div(a, b):
    """``a / b`` correctly rounded, elementwise. XLA rewrites a division by a constant or by a
    broadcast array as a multiplication by the rounded reciprocal (amax / 127, or x / scale
    with one scale per row, one ulp off: 11.25 / 1.875 gives 6.0000005); dividing by a
    full-shape operand behind a barrier keeps the true division."""
    a = jnp.asarray(a)
    return a / lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(b, a.dtype), a.shape))


def amax(x, axis):
    """max |x| over ``axis`` (removed), 0 over an empty axis."""
    return jnp.max(jnp.abs(x), axis=axis, initial=0.0)


def nonzero_or_one(s):
    return jnp.where(s > 0, s, jnp.ones_like(s))


def ceil_pow2(s):
    """The smallest power of two >= s > 0, exactly (frexp: s = m 2**e, m in [0.5, 1))."""
    m, e = jnp.frexp(s)
    return jnp.where(m == 0.5, s, jnp.ldexp(jnp.ones_like(s), e))


def fp8_codes(y, fmt: str):
    """uint8 bit patterns of RNE(saturate(y)): XLA's float8 casts do not saturate."""
    top = FP8_MAX[fmt]
    c = jnp.clip(y, -top, top).astype(FP8_DTYPES[fmt])
    return lax.bitcast_convert_type(c, jnp.uint8)


def fp8_values(codes, fmt: str):
    return lax.bitcast_convert_type(codes, FP8_DTYPES[fmt]).astype(F32)


def e2m1_codes(y):
    """4-bit codes (uint8) on E2M1's grid: saturate to 6, nearest, ties to the even code,
    sign bit 8 from y's sign (negative zero included)."""
    a = jnp.minimum(jnp.abs(y), 6.0)
    mids = jnp.asarray(E2M1_MIDPOINTS, a.dtype)
    i = jnp.searchsorted(mids, a, side="left")  # number of midpoints < a
    tie = (a == mids[jnp.minimum(i, len(E2M1_MIDPOINTS) - 1)]) & (i % 2 == 1)
    mag = (i + tie).astype(jnp.uint8)
    return mag | (jnp.signbit(y).astype(jnp.uint8) << 3)


def pack_nibbles(q):
    """(..., 2n) codes in [0, 15] -> (..., n) uint8: element 2j low nibble, 2j+1 high."""
    return q[..., 0::2] | (q[..., 1::2] << 4)
