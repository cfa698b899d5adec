"""Log-softmax in jitted JAX: x - m - log(sum(exp(x - m))), never log(softmax(x))."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lmspec.backends.jax_xla._common import f32
from lmspec.spec.log_softmax import check_args


def _log_probs(x, axis: int):
    xf = f32(x)
    shifted = xf - xf.max(axis=axis, keepdims=True)
    return shifted - jnp.log(jnp.exp(shifted).sum(axis=axis, keepdims=True))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _log_softmax_op(x, axis: int):
    return _log_probs(x, axis).astype(x.dtype)


def _log_softmax_fwd(x, axis):
    return _log_softmax_op(x, axis), x


def _log_softmax_bwd(axis, x, dy):
    # dx = dy - softmax(x) * sum(dy)
    dyf = f32(dy)
    p = jnp.exp(_log_probs(x, axis))
    return ((dyf - p * dyf.sum(axis=axis, keepdims=True)).astype(x.dtype),)


_log_softmax_op.defvjp(_log_softmax_fwd, _log_softmax_bwd)


@functools.partial(jax.jit, static_argnames=("axis",))
def _log_softmax(x, *, axis: int):
    return x if x.size == 0 else _log_softmax_op(x, axis)


def log_softmax(x, *, axis: int = -1):
    check_args(x, axis=axis)
    return _log_softmax(x, axis=axis % x.ndim)
