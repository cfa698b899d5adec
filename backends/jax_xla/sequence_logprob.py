"""Sequence log-prob in jitted JAX (float32): log-softmax, gathered and masked."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lmspec.backends.jax_xla._common import F32, f32, is_tracer
from lmspec.spec.sequence_logprob import check_args, check_values


@jax.jit
def _logps(logits, targets, mask):
    m = mask.astype(jnp.int32) == 1  # (B, T)
    t = jnp.where(m, targets, 0)  # masked targets are never read
    logp = jax.nn.log_softmax(f32(logits), axis=-1)  # (B, T, V)
    picked = jnp.take_along_axis(logp, t[..., None], axis=-1)[..., 0]  # (B, T)
    return jnp.where(m, picked, 0.0).sum(-1), m.sum(-1).astype(F32)


def sequence_logprob(logits, targets, mask):
    check_args(logits, targets, mask)
    if not (is_tracer(targets) or is_tracer(mask)):
        check_values(np.asarray(targets), np.asarray(mask), logits.shape[-1])
    return _logps(logits, targets, mask)
