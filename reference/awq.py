"""AWQ reference (Lin et al., 2023): llm-awq's scale search over ``x_mean ** alpha``, float64."""

from __future__ import annotations

import numpy as np

from lmspec.reference.quant_int4 import rtn_int4_codes
from lmspec.spec.awq import check_args


def candidate_scales(x, alpha: float) -> np.ndarray:
    """s (in,) float32 for one grid point: ``max(x_mean ** alpha, 1e-4)``, normalized so that
    ``max(s) * min(s) = 1``."""
    x_mean = np.mean(np.abs(np.asarray(x, np.float64)), axis=0)  # (in,)
    s = np.maximum(x_mean**alpha, 1e-4)
    return (s / np.sqrt(s.max() * s.min())).astype(np.float32)


def fake_quant(w, s, group_size: int):
    """RTN of ``w * s`` -> (q, scales, zeros, W_hat = dequant / s) with W_hat (out, in)."""
    s = np.asarray(s, np.float64)
    q, scales, zeros = rtn_int4_codes(np.asarray(w, np.float64) * s, group_size)
    g = np.arange(q.shape[1]) // group_size
    w_hat = (q - zeros[:, g].astype(np.float64)) * scales[:, g].astype(np.float64) / s
    return q, scales, zeros, w_hat


def awq_losses(w, x, *, group_size=128, n_grid=20) -> np.ndarray:
    """The loss at every grid point (n_grid,): what the search minimizes."""
    x = np.asarray(x, np.float64)
    y = x @ np.asarray(w, np.float64).T  # (n, out)
    losses = []
    for t in range(n_grid):
        w_hat = fake_quant(w, candidate_scales(x, t / n_grid), group_size)[3]
        losses.append(np.mean((y - x @ w_hat.T) ** 2))
    return np.asarray(losses)


def awq(w, x, *, group_size=128, n_grid=20):
    check_args(w, x, group_size=group_size, n_grid=n_grid)
    losses = awq_losses(w, x, group_size=group_size, n_grid=n_grid)
    best = int(np.argmin(losses))  # the first of equal minima
    s = candidate_scales(x, best / n_grid)
    q, scales, zeros, _ = fake_quant(w, s, group_size)
    return q, scales, zeros, s
