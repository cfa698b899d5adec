"""Softmax in jitted JAX: max-subtracted, float32 statistics, backward y * (dy - sum(dy y))."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lmspec.backends.jax_xla._common import centred, f32
from lmspec.spec.softmax import check_args


def _probs(x, axis: int):
    xf = f32(x)
    e = jnp.exp(xf - xf.max(axis=axis, keepdims=True))  # max subtraction: logits up to 1e30
    return e / e.sum(axis=axis, keepdims=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _softmax_op(x, axis: int):
    return _probs(x, axis).astype(x.dtype)


def _softmax_fwd(x, axis):
    return _softmax_op(x, axis), x


def _softmax_bwd(axis, x, dy):
    # dx = y * (dy - sum(dy y)), the centring done without cancellation at a one-hot y
    y = _probs(x, axis)
    return ((y * centred(f32(dy), y, axis)).astype(x.dtype),)


_softmax_op.defvjp(_softmax_fwd, _softmax_bwd)


@functools.partial(jax.jit, static_argnames=("axis",))
def _softmax(x, *, axis: int):
    return x if x.size == 0 else _softmax_op(x, axis)


def softmax(x, *, axis: int = -1):
    check_args(x, axis=axis)
    return _softmax(x, axis=axis % x.ndim)
