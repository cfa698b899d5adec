"""Group-wise asymmetric INT4 RTN (GPTQ's grid) in jitted JAX, packed two codes per byte."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lmspec.backends.jax_xla._quant import (
    F32,
    TINY_LIFTED,
    div,
    has_tiny,
    lift,
    lifted_scale,
    pack_nibbles,
    unlift,
)
from lmspec.spec.quant_int4 import QMAX, check_args


@functools.partial(jax.jit, static_argnames=("group_size", "lifted"))
def _quant_int4(w, *, group_size: int, lifted: bool):
    out, n = w.shape
    g = w.astype(F32).reshape(out, n // group_size, group_size)  # (out, G, g)
    lo = jnp.min(g, axis=-1, initial=0.0)  # the range holds 0
    hi = jnp.max(g, axis=-1, initial=0.0)
    scales = div(hi - lo, QMAX)
    degenerate = scales == 0  # all-zero group: GPTQ's [-1, 1]
    lo = jnp.where(degenerate, -1.0, lo)
    scales = jnp.where(degenerate, jnp.asarray(2.0 / QMAX, F32), scales)
    zq, y = div(-lo, scales), div(g, scales[..., None])
    if lifted:
        scales, zq, y = _lifted(g, scales, zq, y)
    zeros = jnp.clip(jnp.round(zq), 0, QMAX)
    q = jnp.clip(jnp.round(y) + zeros[..., None], 0, QMAX)
    return pack_nibbles(q.astype(jnp.uint8).reshape(out, n)), scales, zeros.astype(jnp.uint8)


def _lifted(g, scales, zq, y):
    """Groups with a range < 2**-60, lifted by 2**64 past XLA CPU's flush of subnormals
    (_quant): their scales, zero quotients and quotients replace the float path's."""
    gl = lift(g)
    lol = jnp.min(gl, axis=-1, initial=0.0)
    rl = jnp.max(gl, axis=-1, initial=0.0) - lol
    tiny = rl < TINY_LIFTED
    sl = lifted_scale(rl, QMAX)
    degenerate = sl == 0  # GPTQ's [-1, 1], lifted
    lol = jnp.where(degenerate, F32(-(2.0**64)), lol)
    sl = jnp.where(degenerate, F32(2.0 / QMAX) * F32(2.0**64), sl)
    scales = jnp.where(tiny, unlift(sl), scales)
    zq = jnp.where(tiny, div(-lol, sl), zq)
    y = jnp.where(tiny[..., None], div(gl, sl[..., None]), y)
    return scales, zq, y


def quant_int4(w, *, group_size: int = 128):
    check_args(w, group_size=group_size)
    return _quant_int4(w, group_size=int(group_size), lifted=has_tiny(w))
