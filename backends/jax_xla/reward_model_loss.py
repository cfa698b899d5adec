"""Bradley-Terry reward-model loss in jitted JAX (float32), gradients by jax.vjp."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lmspec.backends.jax_xla._common import f32, softplus
from lmspec.spec.reward_model_loss import check_args


@functools.partial(jax.jit, static_argnames=("center_coef",))
def _loss(chosen, rejected, margin, *, center_coef):
    c, r = f32(chosen), f32(rejected)
    d = c - r if margin is None else c - r - f32(margin)
    loss = jnp.mean(softplus(-d))
    if center_coef:
        loss = loss + center_coef * jnp.mean((c + r) ** 2)
    return loss


def reward_model_loss(chosen, rejected, margin=None, *, center_coef: float = 0.0):
    check_args(chosen, rejected, margin, center_coef=center_coef)
    return _loss(chosen, rejected, margin, center_coef=float(center_coef))
