"""PPO-clip reference: clipped surrogate and clipped value loss, masked means (TRL/baselines)."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import c, exp, f, sum_
from lmspec.spec.ppo_loss import VALUE_HALF, check_args, check_mask


def _parts(logp, old_logp, advantages, values, old_values, returns, clip_range,
           clip_range_value):
    a = f(advantages)
    ratio = exp(f(logp) - f(old_logp))
    pg1 = f(-a * ratio)
    pg2 = f(-a * f(np.clip(ratio, c(1 - clip_range), c(1 + clip_range))))
    v, old, ret = f(values), f(old_values), f(returns)
    v_clip = f(np.clip(v, f(old - c(clip_range_value)), f(old + c(clip_range_value))))
    u, uc = f(v - ret), f(v_clip - ret)
    return a, ratio, pg1, pg2, u, f(u * u), f(uc * uc)


def _weight(mask) -> np.ndarray:
    m = np.asarray(mask, np.float64)
    return f(m / max(m.sum(), 1.0))


def ppo_loss(logp, old_logp, advantages, values, old_values, returns, mask, *,
             clip_range=0.2, clip_range_value=0.2, vf_coef=0.1):
    check_args(logp, old_logp, advantages, values, old_values, returns, mask,
               clip_range=clip_range, clip_range_value=clip_range_value, vf_coef=vf_coef)
    check_mask(np.asarray(mask))
    _, _, pg1, pg2, _, sq1, sq2 = _parts(logp, old_logp, advantages, values, old_values,
                                         returns, clip_range, clip_range_value)
    w = _weight(mask)
    pg = sum_(f(np.maximum(pg1, pg2) * w))
    vf = f(c(VALUE_HALF) * sum_(f(np.maximum(sq1, sq2) * w)))
    return f(pg + f(c(vf_coef) * vf)), pg, vf


def ppo_loss_vjp(cts, logp, old_logp, advantages, values, old_values, returns, mask, *,
                 clip_range=0.2, clip_range_value=0.2, vf_coef=0.1):
    d_loss, d_pg, d_vf = (f(x) for x in cts)
    a, ratio, pg1, pg2, u, sq1, sq2 = _parts(logp, old_logp, advantages, values, old_values,
                                             returns, clip_range, clip_range_value)
    w = _weight(mask)
    g_pg = np.where(pg1 >= pg2, f(-a * ratio), c(0.0))  # unclipped term is the max
    g_vf = np.where(sq1 >= sq2, u, c(0.0))
    d_logp = f(f(g_pg * w) * f(d_loss + d_pg))
    d_values = f(f(c(VALUE_HALF * 2) * f(g_vf * w)) * f(f(c(vf_coef) * d_loss) + d_vf))
    return {"logp": d_logp, "values": d_values}
