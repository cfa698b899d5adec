"""AWQ (Lin et al., 2023) in torch, float64 (llm-awq's scale search): codes then match the
float64 reference exactly, except where two grid points' losses tie within rounding."""

from __future__ import annotations

import torch

from lmspec.backends.torch_triton.gptq import F64, codes, group_params
from lmspec.spec.awq import check_args


def fake_quant(w: torch.Tensor, s: torch.Tensor, group_size: int):
    """RTN of ``w * s`` on quant_int4's grid -> (q, scales, zeros, W_hat = dequant / s)."""
    out, n_in = w.shape
    ws = (w * s.to(F64)).reshape(out * (n_in // group_size), group_size)  # one row per group
    scales, zeros = group_params(ws)
    q = codes(ws, scales[:, None], zeros[:, None])
    w_hat = ((q - zeros[:, None]) * scales.to(F64)[:, None]).reshape(out, n_in) / s.to(F64)
    return (q.reshape(out, n_in), scales.reshape(out, -1), zeros.reshape(out, -1), w_hat)


def candidate_scales(x_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    s = x_mean.pow(alpha).clamp(min=1e-4)
    return (s / torch.sqrt(s.max() * s.min())).to(torch.float32)


def awq(w, x, *, group_size: int = 128, n_grid: int = 20):
    check_args(w, x, group_size=group_size, n_grid=n_grid)
    w, x = w.detach().to(F64), x.detach().to(F64)
    x_mean = x.abs().mean(dim=0)  # (in,)
    y = x @ w.T  # (n, out)
    best, best_loss = None, float("inf")
    for t in range(n_grid):
        s = candidate_scales(x_mean, t / n_grid)
        loss = float(((y - x @ fake_quant(w, s, group_size)[3].T) ** 2).mean())
        if loss < best_loss or best is None:  # strictly smaller replaces: the first minimum
            best, best_loss = s, loss
    q, scales, zeros, _ = fake_quant(w, best, group_size)
    return q.to(torch.uint8), scales, zeros.to(torch.uint8), best
