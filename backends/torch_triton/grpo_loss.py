"""GRPO loss in torch (float32 or wider), gradient by autograd (TRL GRPOTrainer's math)."""

from __future__ import annotations

import torch

from lmspec.spec.grpo_loss import STD_DDOF, STD_EPS, check_args, check_mask


def _advantages(rewards, group_size: int, scale_rewards: bool):
    r = rewards.reshape(-1, group_size)  # (G, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    if not scale_rewards:
        return centred.reshape(-1)
    std = centred.square().sum(dim=1, keepdim=True).div(max(group_size - STD_DDOF, 1)).sqrt()
    return (centred / (std + STD_EPS)).reshape(-1)


def grpo_loss(logp, old_logp, ref_logp, rewards, mask, *, group_size: int,
              epsilon: float = 0.2, epsilon_high: float | None = None, beta: float = 0.0,
              scale_rewards: bool = True, loss_type: str = "grpo",
              max_completion_length: int | None = None):
    check_args(logp, old_logp, ref_logp, rewards, mask, group_size=group_size, epsilon=epsilon,
               epsilon_high=epsilon_high, beta=beta, scale_rewards=scale_rewards,
               loss_type=loss_type, max_completion_length=max_completion_length)
    check_mask(mask.detach().cpu().numpy())
    compute = torch.float64 if logp.dtype == torch.float64 else torch.float32
    lp, old, ref = (a.to(compute) for a in (logp, old_logp, ref_logp))  # (B, T)
    m = mask.to(compute)
    with torch.no_grad():
        adv = _advantages(rewards.to(compute), group_size, scale_rewards)  # (B,)
    a = adv[:, None]
    ratio = torch.exp(lp - old)
    hi = epsilon if epsilon_high is None else epsilon_high
    per = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - epsilon, 1 + hi) * a)
    if beta != 0.0:
        d = ref - lp
        per = per + beta * (torch.exp(d) - d - 1)
    b, t = lp.shape
    if loss_type == "grpo":
        loss = ((per * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per * m).sum() / m.sum().clamp(min=1.0)
    else:
        loss = (per * m).sum() / (b * (max_completion_length or max(t, 1)))
    return loss, adv
