"""Shared helpers of the jax_xla backend: float32 compute, full-precision dots, tracer tests."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32

# Full float32 dots: on GPU/TPU the default precision of a float32 dot is TF32/bf16 passes,
# which is far outside the float32 naive baseline. On CPU this changes nothing.
HIGHEST = lax.Precision.HIGHEST


def f32(a: jax.Array) -> jax.Array:
    """Upcast to float32: low precision computes in float32 and rounds the output once."""
    return a.astype(F32)


def einsum(spec: str, *ops: jax.Array) -> jax.Array:
    """float32 einsum at full precision."""
    return jnp.einsum(spec, *(f32(o) for o in ops), precision=HIGHEST,
                      preferred_element_type=F32)


def is_tracer(a: Any) -> bool:
    """True inside jit/vjp tracing, where host-side value checks cannot read the values."""
    return isinstance(a, jax.core.Tracer)


def mean(a: jax.Array, axis: int = -1) -> jax.Array:
    """sum / n rounded once, keepdims. XLA turns a division by a (broadcast) constant into a
    multiplication by its rounded reciprocal; the barrier keeps the true division, so the mean
    of a constant row is that constant and its centred values are exactly zero."""
    s = a.sum(axis=axis, keepdims=True)
    return s / lax.optimization_barrier(jnp.full(s.shape, a.shape[axis], s.dtype))


def centred(dy: jax.Array, p: jax.Array, axis: int = -1) -> jax.Array:
    """``dy - sum(p * dy)`` for a probability vector p, without the cancellation at p ~ one-hot.

    Any constant c may be taken out first: ``(dy - c) - sum(p (dy - c))`` (sum p = 1). With c
    the cotangent at the most probable entry k, entry k becomes ``-sum_{j != k} p_j (dy_j -
    dy_k)``, accurate however close p_k is to 1, where ``dy_k - sum(p dy)`` rounds to noise (or
    to 0 while the true value is 1e-10: no better than an all-zero gradient).
    """
    if p.shape[axis] == 0:
        return dy
    k = jnp.argmax(p, axis=axis, keepdims=True)
    d = dy - jnp.take_along_axis(dy, k, axis=axis)
    return d - (p * d).sum(axis=axis, keepdims=True)


@jax.custom_jvp
def softplus(x: jax.Array) -> jax.Array:
    """log(1 + e^x), with the derivative sigmoid(x) computed directly: autodiff of
    jax.nn.softplus takes exp(x - softplus(x)), whose rounding is a few float32 ulps off the
    naive baseline (-log sigmoid(x) = softplus(-x))."""
    return jax.nn.softplus(x)


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return softplus(x), jax.nn.sigmoid(x) * t


@jax.custom_jvp
def sigmoid(x: jax.Array) -> jax.Array:
    """jax.nn.sigmoid with the derivative sigmoid(x) sigmoid(-x): autodiff's s (1 - s) cancels
    to a few ulps of 1 where s ~ 1, far off the naive baseline's relative accuracy."""
    return jax.nn.sigmoid(x)


@sigmoid.defjvp
def _sigmoid_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return sigmoid(x), jax.nn.sigmoid(x) * jax.nn.sigmoid(-x) * t
