"""Aux-loss-free bias update reference (DeepSeek-V3): b_i += gamma * sign(mean load - load_i)."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import c, f
from lmspec.spec.moe_balance_loss import check_ids
from lmspec.spec.moe_bias_update import check_args


def expert_load(topk_ids, n_experts: int) -> np.ndarray:
    """(E,) int64 number of assignments to each expert."""
    return np.bincount(np.asarray(topk_ids, np.int64).reshape(-1),
                       minlength=n_experts).astype(np.int64)


def moe_bias_update(bias, topk_ids, *, n_experts, gamma):
    check_args(bias, topk_ids, n_experts=n_experts, gamma=gamma)
    check_ids(np.asarray(topk_ids), n_experts)
    n_assign = int(np.asarray(topk_ids).size)
    # sign(mean - load) with mean = N k / E, compared exactly in integers
    direction = np.sign(n_assign - n_experts * expert_load(topk_ids, n_experts))
    return f(f(bias) + f(c(gamma) * f(direction)))
