"""Symmetric absmax INT8 quantization in jitted JAX: float32 quotient, round half to even."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lmspec.backends.jax_xla._quant import F32, amax, div, nonzero_or_one
from lmspec.spec.quant_int8 import QMAX, check_args


@functools.partial(jax.jit, static_argnames=("axis",))
def _quant_int8(x, *, axis: int):
    xf = x.astype(F32)
    scales = nonzero_or_one(div(amax(xf, axis), QMAX))
    y = div(xf, jnp.expand_dims(scales, axis))
    return jnp.clip(jnp.round(y), -QMAX, QMAX).astype(jnp.int8), scales


def quant_int8(x, *, axis: int = -1):
    check_args(x, axis=axis)
    return _quant_int8(x, axis=int(axis) % x.ndim)
