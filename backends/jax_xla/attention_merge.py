"""Attention merge (Flash-Decoding's combine, Dao et al. 2023) in jitted JAX; jax.vjp backward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lmspec.backends.jax_xla._common import f32
from lmspec.spec.attention_merge import check_args


@jax.jit
def _merge(outs, lses):
    lf = f32(lses)  # (S, B, T, H)
    m = lax.stop_gradient(lf.max(axis=0, initial=-jnp.inf))  # a shift: no gradient of its own
    m = jnp.where(jnp.isfinite(m), m, 0.0)  # every split dead: any finite shift
    e = jnp.exp(lf - m)  # a dead split: exp(-inf) = 0
    total = e.sum(axis=0)
    seen = total > 0
    safe = jnp.where(seen, total, 1.0)  # never log(0) or 0 / 0, even in the unused branch
    w = e / safe
    out = (w[..., None] * f32(outs)).sum(axis=0)  # (B, T, H, D)
    return out.astype(outs.dtype), jnp.where(seen, m + jnp.log(safe), -jnp.inf)


def attention_merge(outs, lses):
    check_args(outs, lses)
    return _merge(outs, lses)
