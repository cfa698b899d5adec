"""Aux-loss-free bias update in torch: integer loads by bincount, exact sign in integers."""

from __future__ import annotations

import torch

from lmspec.spec.moe_balance_loss import check_ids
from lmspec.spec.moe_bias_update import check_args


def moe_bias_update(bias, topk_ids, *, n_experts: int, gamma: float):
    check_args(bias, topk_ids, n_experts=n_experts, gamma=gamma)
    check_ids(topk_ids.detach().cpu().numpy(), n_experts)
    load = torch.bincount(topk_ids.reshape(-1), minlength=n_experts)  # (E,) int64
    direction = torch.sign(topk_ids.numel() - n_experts * load)  # sign(mean - load), exact
    return (bias + gamma * direction.to(bias.dtype)).to(bias.dtype)
