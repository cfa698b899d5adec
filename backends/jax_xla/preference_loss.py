"""DPO / cDPO, robust DPO and IPO in jitted JAX (float32), gradients by jax.vjp."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from lmspec.backends.jax_xla._common import f32, softplus
from lmspec.spec.preference_loss import check_args


@functools.partial(jax.jit, static_argnames=("beta", "loss_type", "label_smoothing"))
def _loss(pc, pr, rc, rr, *, beta, loss_type, label_smoothing):
    chosen = f32(pc) - lax.stop_gradient(f32(rc))  # (B,) log-ratios
    rejected = f32(pr) - lax.stop_gradient(f32(rr))
    h = chosen - rejected
    eps = label_smoothing
    if loss_type == "sigmoid":
        per = (1 - eps) * softplus(-beta * h) + eps * softplus(beta * h)
    elif loss_type == "robust":
        per = (((1 - eps) * softplus(-beta * h) - eps * softplus(beta * h))
               / (1 - 2 * eps))
    else:  # ipo
        per = (h - 1 / (2 * beta)) ** 2
    return (jnp.mean(per), lax.stop_gradient(beta * chosen),
            lax.stop_gradient(beta * rejected))


def preference_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *,
                    beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0):
    check_args(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta,
               loss_type=loss_type, label_smoothing=label_smoothing)
    return _loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=float(beta),
                 loss_type=loss_type, label_smoothing=float(label_smoothing))
