"""Preference-loss reference: DPO / cDPO (sigmoid), robust DPO, IPO on sequence log-probs."""

from __future__ import annotations

from lmspec.reference._numerics import c, f, mean, sigmoid, softplus
from lmspec.spec.preference_loss import check_args


def _margin(pc, pr, rc, rr):
    """h = (pc - rc) - (pr - rr), the two log-ratios first (TRL's order)."""
    chosen, rejected = f(f(pc) - f(rc)), f(f(pr) - f(rr))
    return chosen, rejected, f(chosen - rejected)


def preference_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta=0.1,
                    loss_type="sigmoid", label_smoothing=0.0):
    check_args(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta,
               loss_type=loss_type, label_smoothing=label_smoothing)
    chosen, rejected, h = _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    b, eps = c(beta), label_smoothing
    bh = f(b * h)
    if loss_type == "sigmoid":
        per = f(f(c(1 - eps) * softplus(-bh)) + f(c(eps) * softplus(bh)))
    elif loss_type == "robust":
        per = f(f(f(c(1 - eps) * softplus(-bh)) - f(c(eps) * softplus(bh))) / c(1 - 2 * eps))
    else:  # ipo
        d = f(h - c(1 / (2 * beta)))
        per = f(d * d)
    return mean(per), f(b * chosen), f(b * rejected)


def preference_loss_vjp(cots, policy_chosen, policy_rejected, ref_chosen, ref_rejected, *,
                        beta=0.1, loss_type="sigmoid", label_smoothing=0.0):
    dloss = f(cots[0])  # the rewards' cotangents are ignored: they carry no gradient
    _, _, h = _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    b, eps = c(beta), label_smoothing
    bh = f(b * h)
    # d sp(x)/dx = sigmoid(x)
    if loss_type == "sigmoid":
        dh = f(b * f(f(c(eps) * sigmoid(bh)) - f(c(1 - eps) * sigmoid(-bh))))
    elif loss_type == "robust":
        dh = f(f(b * f(-f(c(1 - eps) * sigmoid(-bh)) - f(c(eps) * sigmoid(bh))))
               / c(1 - 2 * eps))
    else:  # ipo
        dh = f(c(2.0) * f(h - c(1 / (2 * beta))))
    g = f(dh * f(dloss / c(h.shape[0])))
    return {"policy_chosen": g, "policy_rejected": f(-g)}
