"""Bradley-Terry reward-model loss in torch (float32 or wider), gradients by autograd."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmspec.spec.reward_model_loss import check_args


def reward_model_loss(chosen, rejected, margin=None, *, center_coef: float = 0.0):
    check_args(chosen, rejected, margin, center_coef=center_coef)
    compute = torch.float64 if chosen.dtype == torch.float64 else torch.float32
    c, r = chosen.to(compute), rejected.to(compute)
    d = c - r if margin is None else c - r - margin.to(compute)
    loss = -F.logsigmoid(d).mean()
    if center_coef:
        loss = loss + center_coef * ((c + r) ** 2).mean()
    return loss
