"""Shared pieces of the jax quantizers: true divisions by constants, exact power-of-two
helpers, saturating FP8 and E2M1 rounding, nibble packing."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
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


# Subnormal scales. XLA's CPU runtime flushes float32 subnormals to zero, as inputs and as
# results (FTZ/DAZ, by design: jax-ml/jax#16200), so fl32(amax / qmax) below 2**-126 would come
# out 0 (hence scale 1 and codes 0) where the spec has a scale of a few 2**-149 ulps. Groups
# whose amax is below 2**-60 are therefore quantized "lifted": every value times 2**LIFT,
# exactly (subnormal inputs rebuilt from their bits), so that all arithmetic stays normal;
# a subnormal scale is rounded in integers, and brought back down through its bit pattern.
LIFT = 64
TINY_LIFTED = 2.0**(LIFT - 60)  # a lifted amax below this: the group takes the lifted path
_UP, _ULP = 2.0**LIFT, 2.0**(LIFT - 149)  # 1 and float32's smallest subnormal, lifted


def has_tiny(x) -> bool:
    """Whether any value of ``x`` is nonzero and below 2**-60 in magnitude (checked on the
    host, where NumPy keeps subnormals): only then is the lifted path compiled in."""
    a = np.abs(np.asarray(x).astype(np.float32))
    return bool(np.any((a > 0) & (a < 2.0**-60)))


def lift(x):
    """float32 ``x * 2**LIFT`` exactly, subnormal x included (inf where that overflows, i.e.
    only in groups that never take the lifted path)."""
    b = lax.bitcast_convert_type(x, jnp.int32)
    m = (b & 0x7FFFFF).astype(F32) * F32(_ULP)  # a subnormal's value, lifted (normal)
    return jnp.where((b >> 23) & 0xFF == 0, jnp.where(b < 0, -m, m), x * F32(_UP))


def lifted_scale(amax_lifted, qmax: float):
    """``fl32(amax / qmax) * 2**LIFT`` (one rounding of the exact quotient, also where that
    is a subnormal float32; 0 where it underflows), from ``amax * 2**LIFT``."""
    normal = div(amax_lifted, qmax)  # right where the true scale is a normal float32
    c, p = float(qmax), 0  # qmax = c * 2**p, c odd: 127, 15, 7 * 2**6 (448), 7 * 2**13
    while c % 2 == 0:
        c, p = c / 2, p + 1
    u = amax_lifted * F32(2.0**(149 - p - LIFT))  # amax / 2**p in ulps: a multiple of 2**-p
    u = jnp.minimum(u, F32(2.0**30))  # the subnormal path needs u < c * 2**23 only
    n_int = u.astype(jnp.int32)  # floor (u >= 0)
    frac = u - n_int.astype(F32)  # exact
    q, r = n_int // int(c), n_int % int(c)
    rf2 = 2 * (r.astype(F32) + frac)  # 2 * (remainder of u / c), exact
    up = (rf2 > c) | ((rf2 == c) & (q % 2 == 1))  # round half to even
    sub = (q + up.astype(jnp.int32)).astype(F32) * F32(_ULP)
    return jnp.where(amax_lifted >= F32(qmax * 2.0**(LIFT - 126)), normal, sub)


def unlift(s_lifted):
    """``s_lifted * 2**-LIFT`` exactly for a multiple of the lifted smallest subnormal: the
    float32 subnormal built from its bits where the result is below 2**-126."""
    n = lax.bitcast_convert_type((s_lifted * F32(2.0**(149 - LIFT))).astype(jnp.int32), F32)
    return jnp.where(s_lifted >= F32(2.0**(LIFT - 126)), s_lifted * F32(2.0**-LIFT), n)
