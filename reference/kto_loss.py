"""KTO loss reference: sigmoid losses against a detached, clamped mismatched-pair KL baseline."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import c, f, mean, sigmoid
from lmspec.spec.kto_loss import check_args, check_labels


def _baseline(policy_kl_logps, ref_kl_logps):
    """z0 = max(mean(policy_kl - ref_kl), 0)."""
    return f(np.maximum(mean(f(f(policy_kl_logps) - f(ref_kl_logps))), c(0.0)))


def _x(policy_logps, ref_logps, z0, beta):
    """x = beta (r - z0), r the log-ratio (B,)."""
    return f(c(beta) * f(f(f(policy_logps) - f(ref_logps)) - z0))


def kto_loss(policy_logps, ref_logps, desirable, policy_kl_logps, ref_kl_logps, *, beta=0.1,
             desirable_weight=1.0, undesirable_weight=1.0):
    check_args(policy_logps, ref_logps, desirable, policy_kl_logps, ref_kl_logps, beta=beta,
               desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    check_labels(np.asarray(desirable))
    z0 = _baseline(policy_kl_logps, ref_kl_logps)
    x = _x(policy_logps, ref_logps, z0, beta)
    good = np.asarray(desirable).astype(bool)
    # 1 - sigmoid(x) = sigmoid(-x); 1 - sigmoid(-x) = sigmoid(x)
    per = np.where(good, f(c(desirable_weight) * sigmoid(-x)),
                   f(c(undesirable_weight) * sigmoid(x)))
    return mean(per), z0


def kto_loss_vjp(cots, policy_logps, ref_logps, desirable, policy_kl_logps, ref_kl_logps, *,
                 beta=0.1, desirable_weight=1.0, undesirable_weight=1.0):
    dloss = f(cots[0])  # kl is a detached baseline: its cotangent flows nowhere
    z0 = _baseline(policy_kl_logps, ref_kl_logps)
    x = _x(policy_logps, ref_logps, z0, beta)
    s = f(c(beta) * f(sigmoid(x) * sigmoid(-x)))  # (B,) beta sigmoid'(x)
    good = np.asarray(desirable).astype(bool)
    w = np.where(good, c(-desirable_weight), c(undesirable_weight))
    g = f(f(w * s) * f(dloss / c(len(x))))
    return {"policy_logps": g, "policy_kl_logps": f(np.zeros(np.shape(policy_kl_logps)))}
