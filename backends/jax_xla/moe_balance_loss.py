"""MoE balance losses in jitted JAX (float32), gradients by jax.vjp; counts by bincount."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lmspec.backends.jax_xla._common import f32, is_tracer
from lmspec.spec.moe_balance_loss import NORM_EPS, check_args, check_ids


@functools.partial(jax.jit, static_argnames=("kind", "n_seq", "alpha"))
def _loss(scores, topk_ids, *, kind, n_seq, alpha):
    n, e = scores.shape
    s = f32(scores)  # (N, E)
    if n == 0:
        return jnp.float32(0.0) * s.sum()
    if kind == "z":
        return alpha * jnp.mean(jax.nn.logsumexp(s, axis=-1) ** 2)
    k = topk_ids.shape[1]
    if kind == "switch":
        frac = jnp.bincount(topk_ids.reshape(-1), length=e).astype(jnp.float32) / (n * k)
        return alpha * e * jnp.sum(frac * s.mean(axis=0))
    t = n // n_seq
    ids = topk_ids.reshape(n_seq, t * k)
    counts = jax.vmap(lambda r: jnp.bincount(r, length=e))(ids)  # (B, E)
    frac = counts.astype(jnp.float32) * (e / (k * t))
    sn = s / (s.sum(axis=-1, keepdims=True) + NORM_EPS)
    p = sn.reshape(n_seq, t, e).mean(axis=1)  # (B, E)
    return alpha * jnp.mean(jnp.sum(frac * p, axis=-1))


def moe_balance_loss(scores, topk_ids, *, kind: str, n_seq: int = 1, alpha: float = 1.0):
    check_args(scores, topk_ids, kind=kind, n_seq=n_seq, alpha=alpha)
    if kind != "z" and not is_tracer(topk_ids):
        check_ids(np.asarray(topk_ids), scores.shape[1])
    return _loss(scores, None if kind == "z" else topk_ids, kind=kind, n_seq=n_seq,
                 alpha=float(alpha))
