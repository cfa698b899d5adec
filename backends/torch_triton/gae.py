"""GAE in torch: the backward recursion over T, vectorized over the batch (float32 or wider)."""

from __future__ import annotations

import torch

from lmspec.spec.gae import check_args, check_mask


@torch.no_grad()
def gae(rewards, values, mask, *, gamma: float = 1.0, lam: float = 0.95):
    check_args(rewards, values, mask, gamma=gamma, lam=lam)
    check_mask(mask.detach().cpu().numpy())
    compute = torch.float64 if values.dtype == torch.float64 else torch.float32
    r, v = rewards.to(compute), values.to(compute)  # (B, T)
    m = mask == 1
    b, t = r.shape
    adv = torch.zeros_like(r)
    next_v = r.new_zeros(b)
    next_a = r.new_zeros(b)
    for s in range(t - 1, -1, -1):
        a = r[:, s] + gamma * next_v - v[:, s] + (gamma * lam) * next_a
        adv[:, s] = torch.where(m[:, s], a, 0.0)
        next_v = torch.where(m[:, s], v[:, s], 0.0)
        next_a = adv[:, s]
    returns = torch.where(m, adv + v, 0.0)
    return adv.to(values.dtype), returns.to(values.dtype)
