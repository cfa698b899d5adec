"""GRPO loss reference: group-normalized advantages, clipped ratio, k3 KL (TRL's conventions)."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import c, exp, f, sqrt, sum_
from lmspec.spec.grpo_loss import STD_DDOF, STD_EPS, check_args, check_mask


def advantages_of(rewards, group_size: int, scale_rewards: bool) -> np.ndarray:
    """(B,) (r - group mean) / (unbiased group std + STD_EPS); std 0 for a group of one."""
    r = f(rewards).reshape(-1, group_size)  # (G, group_size)
    centred = f(r - sum_(r, axis=1, keepdims=True) / c(group_size))
    if not scale_rewards:
        return centred.reshape(-1)
    ddof = max(group_size - STD_DDOF, 1)
    std = sqrt(sum_(centred * centred, axis=1, keepdims=True) / c(ddof))
    return f(centred / f(std + c(STD_EPS))).reshape(-1)


def _weights(mask, loss_type: str, max_completion_length: int | None) -> np.ndarray:
    """(B, T) weight of each token's loss in the reduction (0 off the mask)."""
    m = np.asarray(mask, np.float64)
    b, t = m.shape
    if loss_type == "grpo":
        w = m / (b * np.maximum(m.sum(axis=1, keepdims=True), 1.0))
    elif loss_type == "bnpo":
        w = m / max(m.sum(), 1.0)
    else:
        w = m / (b * (max_completion_length or max(t, 1)))
    return f(w)


def _parts(logp, old_logp, ref_logp, rewards, group_size, epsilon, epsilon_high,
           scale_rewards):
    adv = advantages_of(rewards, group_size, scale_rewards)
    a = adv[:, None]  # (B, 1)
    ratio = exp(f(logp) - f(old_logp))
    hi = epsilon if epsilon_high is None else epsilon_high
    clipped = f(np.clip(ratio, c(1 - epsilon), c(1 + hi)))
    unclipped_term, clipped_term = f(ratio * a), f(clipped * a)
    d = f(f(ref_logp) - f(logp))
    k3 = f(f(exp(d) - d) - c(1.0))
    return adv, ratio, unclipped_term, clipped_term, d, k3


def grpo_loss(logp, old_logp, ref_logp, rewards, mask, *, group_size, epsilon=0.2,
              epsilon_high=None, beta=0.0, scale_rewards=True, loss_type="grpo",
              max_completion_length=None):
    check_args(logp, old_logp, ref_logp, rewards, mask, group_size=group_size, epsilon=epsilon,
               epsilon_high=epsilon_high, beta=beta, scale_rewards=scale_rewards,
               loss_type=loss_type, max_completion_length=max_completion_length)
    check_mask(np.asarray(mask))
    adv, _, u, cl, _, k3 = _parts(logp, old_logp, ref_logp, rewards, group_size, epsilon,
                                  epsilon_high, scale_rewards)
    per = f(-np.minimum(u, cl) + f(c(beta) * k3))  # (B, T)
    w = _weights(mask, loss_type, max_completion_length)
    return sum_(f(per * w)), adv


def grpo_loss_vjp(cts, logp, old_logp, ref_logp, rewards, mask, *, group_size, epsilon=0.2,
                  epsilon_high=None, beta=0.0, scale_rewards=True, loss_type="grpo",
                  max_completion_length=None):
    dloss = cts[0] if isinstance(cts, tuple) else cts  # advantages carry no gradient
    adv, ratio, u, cl, d, _ = _parts(logp, old_logp, ref_logp, rewards, group_size, epsilon,
                                     epsilon_high, scale_rewards)
    active = u <= cl  # the unclipped term is the min (both equal inside the clip range)
    g_pol = np.where(active, f(-ratio * adv[:, None]), c(0.0))
    g_kl = f(c(beta) * f(c(1.0) - exp(d)))
    w = _weights(mask, loss_type, max_completion_length)
    g = f(f(g_pol + g_kl) * f(w * f(dloss)))
    return {"logp": g, "old_logp": None, "ref_logp": None, "rewards": None}


def grpo_loss_magnitude(logp, old_logp, ref_logp, rewards, mask, *, group_size, epsilon=0.2,
                        epsilon_high=None, beta=0.0, scale_rewards=True, loss_type="grpo",
                        max_completion_length=None):
    """Error scales: the loss's sum of |terms|; an advantage's |r| + |mean| over (std + eps)."""
    adv, ratio, _, _, d, _ = _parts(logp, old_logp, ref_logp, rewards, group_size, epsilon,
                                    epsilon_high, scale_rewards)
    w = _weights(mask, loss_type, max_completion_length)
    terms = ratio * np.abs(adv)[:, None] + beta * (np.exp(d) + np.abs(d) + 1)
    r = np.abs(np.asarray(rewards, np.float64)).reshape(-1, group_size)
    scale = np.abs(adv) + (r.max(axis=1, keepdims=True) * np.ones_like(r)).reshape(-1)
    return float(np.sum(terms * w)), scale


def grpo_loss_vjp_magnitude(cts, logp, old_logp, ref_logp, rewards, mask, *, group_size,
                            epsilon=0.2, epsilon_high=None, beta=0.0, scale_rewards=True,
                            loss_type="grpo", max_completion_length=None):
    dloss = cts[0] if isinstance(cts, tuple) else cts
    adv, ratio, _, _, d, _ = _parts(logp, old_logp, ref_logp, rewards, group_size, epsilon,
                                    epsilon_high, scale_rewards)
    w = _weights(mask, loss_type, max_completion_length)
    terms = ratio * np.abs(adv)[:, None] + beta * (np.exp(d) + 1)
    return {"logp": terms * w * abs(float(np.asarray(dloss)))}
