"""Aux-loss-free bias update in jitted JAX: integer loads by bincount, exact sign in integers."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lmspec.backends.jax_xla._common import is_tracer
from lmspec.spec.moe_balance_loss import check_ids
from lmspec.spec.moe_bias_update import check_args


@functools.partial(jax.jit, static_argnames=("n_experts", "gamma"))
def _update(bias, topk_ids, *, n_experts, gamma):
    load = jnp.bincount(topk_ids.reshape(-1), length=n_experts)  # (E,) int32
    direction = jnp.sign(topk_ids.size - n_experts * load)  # sign(mean - load), exact
    return (bias.astype(jnp.float32) + gamma * direction.astype(jnp.float32)).astype(bias.dtype)


def moe_bias_update(bias, topk_ids, *, n_experts: int, gamma: float):
    check_args(bias, topk_ids, n_experts=n_experts, gamma=gamma)
    if not is_tracer(topk_ids):
        check_ids(np.asarray(topk_ids), n_experts)
    return _update(bias, topk_ids, n_experts=n_experts, gamma=float(gamma))
