"""GAE reference: the backward recursion of Schulman et al. (2016), one step at a time."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import c, f
from lmspec.spec.gae import check_args, check_mask


def gae(rewards, values, mask, *, gamma=1.0, lam=0.95):
    check_args(rewards, values, mask, gamma=gamma, lam=lam)
    check_mask(np.asarray(mask))
    r, v = f(rewards), f(values)  # (B, T)
    m = np.asarray(mask) == 1
    b, t = r.shape
    adv = np.zeros((b, t), r.dtype)
    next_v = np.zeros(b, r.dtype)  # V_{t+1} m_{t+1}: 0 past the end
    next_a = np.zeros(b, r.dtype)  # A_{t+1} m_{t+1}
    for s in range(t - 1, -1, -1):
        delta = f(f(r[:, s] + f(c(gamma) * next_v)) - v[:, s])
        a = f(delta + f(c(gamma * lam) * next_a))
        adv[:, s] = np.where(m[:, s], a, c(0.0))
        next_v = np.where(m[:, s], v[:, s], c(0.0))
        next_a = adv[:, s]
    returns = np.where(m, f(adv + v), c(0.0))
    return adv, returns
