"""Bradley-Terry reward-model loss reference (TRL RewardTrainer: margin, centering)."""

from __future__ import annotations

from lmspec.reference._numerics import c, f, mean, sigmoid, softplus
from lmspec.spec.reward_model_loss import check_args


def _d(chosen, rejected, margin):
    d = f(f(chosen) - f(rejected))
    return d if margin is None else f(d - f(margin))


def reward_model_loss(chosen, rejected, margin=None, *, center_coef=0.0):
    check_args(chosen, rejected, margin, center_coef=center_coef)
    loss = mean(softplus(-_d(chosen, rejected, margin)))
    if center_coef:
        s = f(f(chosen) + f(rejected))
        loss = f(loss + f(c(center_coef) * mean(f(s * s))))
    return loss


def reward_model_loss_vjp(dloss, chosen, rejected, margin=None, *, center_coef=0.0):
    scale = f(f(dloss) / c(len(chosen)))
    s = sigmoid(-_d(chosen, rejected, margin))  # (B,) = -d sp(-d) / d d
    centre = f(c(2 * center_coef) * f(f(chosen) + f(rejected)))
    return {"chosen": f(f(centre - s) * scale), "rejected": f(f(centre + s) * scale)}
