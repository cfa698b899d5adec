"""KTO loss in jitted JAX (float32), gradients by jax.vjp; the KL baseline is stop_gradient."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lmspec.backends.jax_xla._common import f32, is_tracer, sigmoid
from lmspec.spec.kto_loss import check_args, check_labels


@functools.partial(jax.jit, static_argnames=("beta", "w_d", "w_u"))
def _loss(p, r, desirable, p_kl, r_kl, *, beta, w_d, w_u):
    z0 = lax.stop_gradient(jnp.maximum(jnp.mean(f32(p_kl) - f32(r_kl)), 0.0))
    x = beta * (f32(p) - f32(r) - z0)  # (B,)
    good = desirable.astype(jnp.int32) == 1
    per = jnp.where(good, w_d * sigmoid(-x), w_u * sigmoid(x))
    return jnp.mean(per), z0


def kto_loss(policy_logps, ref_logps, desirable, policy_kl_logps, ref_kl_logps, *,
             beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
    check_args(policy_logps, ref_logps, desirable, policy_kl_logps, ref_kl_logps, beta=beta,
               desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    if not is_tracer(desirable):
        check_labels(np.asarray(desirable))
    return _loss(policy_logps, ref_logps, desirable, policy_kl_logps, ref_kl_logps,
                 beta=float(beta), w_d=float(desirable_weight), w_u=float(undesirable_weight))
