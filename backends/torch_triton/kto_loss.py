"""KTO loss in torch (float32 or wider), gradients by autograd; the KL baseline is detached."""

from __future__ import annotations

import torch

from lmspec.spec.kto_loss import check_args, check_labels


class _Sigmoid(torch.autograd.Function):
    """sigmoid with the derivative sigmoid(x) sigmoid(-x): autograd's s (1 - s) cancels to a
    few ulps of 1 where s ~ 1, far off the naive baseline's relative accuracy."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sigmoid(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(x) * torch.sigmoid(-x)


def kto_loss(policy_logps, ref_logps, desirable, policy_kl_logps, ref_kl_logps, *,
             beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
    check_args(policy_logps, ref_logps, desirable, policy_kl_logps, ref_kl_logps, beta=beta,
               desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    check_labels(desirable.detach().cpu().numpy())
    compute = torch.float64 if policy_logps.dtype == torch.float64 else torch.float32
    p, r = policy_logps.to(compute), ref_logps.to(compute)
    z0 = (policy_kl_logps.to(compute) - ref_kl_logps.to(compute)).mean().detach().clamp(min=0)
    x = beta * (p - r - z0)  # (B,)
    good = desirable.to(torch.int64) == 1
    per = torch.where(good, desirable_weight * _Sigmoid.apply(-x),
                      undesirable_weight * _Sigmoid.apply(x))
    return per.mean(), z0
