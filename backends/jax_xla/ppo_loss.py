"""PPO-clip loss in jitted JAX (float32), gradients by jax.vjp (TRL PPOTrainer's math)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lmspec.backends.jax_xla._common import F32, f32, is_tracer
from lmspec.spec.ppo_loss import VALUE_HALF, check_args, check_mask


# the coefficients are traced, not static: one compile per shape and dtype, not per value
@jax.jit
def _ppo(logp, old_logp, advantages, values, old_values, returns, mask, clip_range,
         clip_range_value, vf_coef):
    lp, old, a, v, ov, ret = (f32(x) for x in (logp, old_logp, advantages, values, old_values,
                                               returns))  # (B, T)
    m = mask.astype(F32)
    n = jnp.maximum(m.sum(), 1.0)
    ratio = jnp.exp(lp - old)
    pg = jnp.maximum(-a * ratio, -a * jnp.clip(ratio, 1 - clip_range, 1 + clip_range))
    pg_loss = (pg * m).sum() / n
    v_clip = jnp.clip(v, ov - clip_range_value, ov + clip_range_value)
    vf = jnp.maximum(jnp.square(v - ret), jnp.square(v_clip - ret))
    vf_loss = VALUE_HALF * (vf * m).sum() / n
    return pg_loss + vf_coef * vf_loss, pg_loss, vf_loss


def ppo_loss(logp, old_logp, advantages, values, old_values, returns, mask, *,
             clip_range: float = 0.2, clip_range_value: float = 0.2, vf_coef: float = 0.1):
    check_args(logp, old_logp, advantages, values, old_values, returns, mask,
               clip_range=clip_range, clip_range_value=clip_range_value, vf_coef=vf_coef)
    if not is_tracer(mask):
        check_mask(np.asarray(mask))
    return _ppo(logp, old_logp, advantages, values, old_values, returns, mask,
                *(np.float32(x) for x in (clip_range, clip_range_value, vf_coef)))
