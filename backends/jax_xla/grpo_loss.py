"""GRPO loss in jitted JAX (float32), gradient by jax.vjp (TRL GRPOTrainer's math)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lmspec.backends.jax_xla._common import F32, f32, is_tracer
from lmspec.spec.grpo_loss import STD_DDOF, STD_EPS, check_args, check_mask


def _advantages(rewards, group_size: int, scale_rewards):
    r = f32(rewards).reshape(-1, group_size)  # (G, group_size)
    centred = r - r.sum(axis=1, keepdims=True) / group_size
    std = jnp.sqrt((centred * centred).sum(axis=1, keepdims=True) / max(group_size - STD_DDOF, 1))
    return jnp.where(scale_rewards, centred / (std + STD_EPS), centred).reshape(-1)


# the coefficients, scale_rewards and the dr_grpo length are traced: one compile per shape,
# dtype, group size and reduction
@functools.partial(jax.jit, static_argnames=("group_size", "loss_type"))
def _grpo(logp, old_logp, ref_logp, rewards, mask, epsilon, epsilon_high, beta, scale_rewards,
          length, *, group_size, loss_type):
    lp, old, ref, m = f32(logp), f32(old_logp), f32(ref_logp), mask.astype(F32)  # (B, T)
    adv = jax.lax.stop_gradient(_advantages(rewards, group_size, scale_rewards))  # (B,)
    a = adv[:, None]
    ratio = jnp.exp(lp - old)
    per = -jnp.minimum(ratio * a, jnp.clip(ratio, 1 - epsilon, 1 + epsilon_high) * a)
    d = ref - lp
    per = per + beta * (jnp.exp(d) - d - 1)
    b = lp.shape[0]
    if loss_type == "grpo":
        loss = ((per * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per * m).sum() / jnp.maximum(m.sum(), 1.0)
    else:
        loss = (per * m).sum() / (b * length)
    return loss, adv


def grpo_loss(logp, old_logp, ref_logp, rewards, mask, *, group_size: int,
              epsilon: float = 0.2, epsilon_high: float | None = None, beta: float = 0.0,
              scale_rewards: bool = True, loss_type: str = "grpo",
              max_completion_length: int | None = None):
    check_args(logp, old_logp, ref_logp, rewards, mask, group_size=group_size, epsilon=epsilon,
               epsilon_high=epsilon_high, beta=beta, scale_rewards=scale_rewards,
               loss_type=loss_type, max_completion_length=max_completion_length)
    if not is_tracer(mask):
        check_mask(np.asarray(mask))
    length = int(max_completion_length or max(logp.shape[1], 1))
    hi = epsilon if epsilon_high is None else epsilon_high
    return _grpo(logp, old_logp, ref_logp, rewards, mask,
                 *(np.float32(x) for x in (epsilon, hi, beta)), np.bool_(scale_rewards),
                 np.float32(length), group_size=int(group_size), loss_type=loss_type)
