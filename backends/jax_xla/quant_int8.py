"""Symmetric absmax INT8 quantization in jitted JAX: float32 quotient, round half to even."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lmspec.backends.jax_xla._quant import (
    F32,
    TINY_LIFTED,
    amax,
    div,
    has_tiny,
    lift,
    lifted_scale,
    nonzero_or_one,
    unlift,
)
from lmspec.spec.quant_int8 import QMAX, check_args


@functools.partial(jax.jit, static_argnames=("axis", "lifted"))
def _quant_int8(x, *, axis: int, lifted: bool):
    xf = x.astype(F32)
    scales = nonzero_or_one(div(amax(xf, axis), QMAX))
    y = div(xf, jnp.expand_dims(scales, axis))
    if not lifted:
        return jnp.clip(jnp.round(y), -QMAX, QMAX).astype(jnp.int8), scales
    # slices with amax < 2**-60, lifted by 2**64 past XLA CPU's flush of subnormals (_quant)
    xl = lift(xf)
    al = amax(xl, axis)
    tiny = al < TINY_LIFTED
    sl = lifted_scale(al, QMAX)
    sl = jnp.where(sl > 0, sl, F32(2.0**64))  # scale 1 where it underflows (or amax is 0)
    scales = jnp.where(tiny, unlift(sl), scales)
    y = jnp.where(jnp.expand_dims(tiny, axis), div(xl, jnp.expand_dims(sl, axis)), y)
    return jnp.clip(jnp.round(y), -QMAX, QMAX).astype(jnp.int8), scales


def quant_int8(x, *, axis: int = -1):
    check_args(x, axis=axis)
    return _quant_int8(x, axis=int(axis) % x.ndim, lifted=has_tiny(x))
