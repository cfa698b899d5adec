"""GAE in JAX: the backward recursion as a reversed lax.scan over T (float32)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lmspec.backends.jax_xla._common import f32, is_tracer
from lmspec.spec.gae import check_args, check_mask


@jax.jit  # gamma and lam traced: one compile per shape and dtype
def _gae(rewards, values, mask, gamma, lam):
    r, v, m = f32(rewards).T, f32(values).T, (mask == 1).T  # (T, B): scan over time

    def step(carry, x):
        next_v, next_a = carry
        rs, vs, ms = x
        a = jnp.where(ms, rs + gamma * next_v - vs + (gamma * lam) * next_a, 0.0)
        return (jnp.where(ms, vs, 0.0), a), a

    zero = jnp.zeros(r.shape[1], r.dtype)
    _, adv = jax.lax.scan(step, (zero, zero), (r, v, m), reverse=True)
    returns = jnp.where(m, adv + v, 0.0)
    return adv.T.astype(values.dtype), returns.T.astype(values.dtype)


def gae(rewards, values, mask, *, gamma: float = 1.0, lam: float = 0.95):
    check_args(rewards, values, mask, gamma=gamma, lam=lam)
    if not is_tracer(mask):
        check_mask(np.asarray(mask))
    return _gae(rewards, values, mask, np.float32(gamma), np.float32(lam))
