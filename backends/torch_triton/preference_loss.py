"""DPO / cDPO, robust DPO and IPO in torch (float32 or wider), gradients by autograd."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmspec.spec.preference_loss import check_args


def preference_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *,
                    beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0):
    check_args(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta,
               loss_type=loss_type, label_smoothing=label_smoothing)
    compute = torch.float64 if policy_chosen.dtype == torch.float64 else torch.float32
    pc, pr, rc, rr = (a.to(compute) for a in (policy_chosen, policy_rejected, ref_chosen,
                                              ref_rejected))
    chosen, rejected = pc - rc.detach(), pr - rr.detach()  # (B,) log-ratios
    h = chosen - rejected
    eps = label_smoothing
    if loss_type == "sigmoid":
        per = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        per = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    else:  # ipo
        per = (h - 1 / (2 * beta)) ** 2
    return per.mean(), beta * chosen.detach(), beta * rejected.detach()
