"""PPO-clip loss in torch (float32 or wider), gradients by autograd (TRL PPOTrainer's math)."""

from __future__ import annotations

import torch

from lmspec.spec.ppo_loss import VALUE_HALF, check_args, check_mask


def ppo_loss(logp, old_logp, advantages, values, old_values, returns, mask, *,
             clip_range: float = 0.2, clip_range_value: float = 0.2, vf_coef: float = 0.1):
    check_args(logp, old_logp, advantages, values, old_values, returns, mask,
               clip_range=clip_range, clip_range_value=clip_range_value, vf_coef=vf_coef)
    check_mask(mask.detach().cpu().numpy())
    compute = torch.float64 if logp.dtype == torch.float64 else torch.float32
    lp, old, a, v, ov, ret = (x.to(compute) for x in (logp, old_logp, advantages, values,
                                                       old_values, returns))  # (B, T)
    m = mask.to(compute)
    n = m.sum().clamp(min=1.0)
    ratio = torch.exp(lp - old)
    pg = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1 - clip_range, 1 + clip_range))
    pg_loss = (pg * m).sum() / n
    v_clip = torch.clamp(v, ov - clip_range_value, ov + clip_range_value)
    vf = torch.maximum((v - ret).square(), (v_clip - ret).square())
    vf_loss = VALUE_HALF * (vf * m).sum() / n
    return pg_loss + vf_coef * vf_loss, pg_loss, vf_loss
