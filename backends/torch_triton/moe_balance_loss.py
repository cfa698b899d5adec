"""MoE balance losses in torch (float32 or wider), gradients by autograd; counts by bincount."""

from __future__ import annotations

import torch

from lmspec.spec.moe_balance_loss import NORM_EPS, check_args, check_ids


def _counts(ids: torch.Tensor, e: int) -> torch.Tensor:
    """(E,) assignment counts."""
    return torch.bincount(ids.reshape(-1), minlength=e)


def moe_balance_loss(scores, topk_ids, *, kind: str, n_seq: int = 1, alpha: float = 1.0):
    check_args(scores, topk_ids, kind=kind, n_seq=n_seq, alpha=alpha)
    n, e = scores.shape
    if kind != "z":
        check_ids(topk_ids.detach().cpu().numpy(), e)
    compute = torch.float64 if scores.dtype == torch.float64 else torch.float32
    s = scores.to(compute)  # (N, E)
    if n == 0:
        return s.sum() * 0.0
    if kind == "z":
        return alpha * torch.logsumexp(s, dim=-1).square().mean()
    k = topk_ids.shape[1]
    if kind == "switch":
        frac = _counts(topk_ids, e).to(compute) / (n * k)  # (E,)
        return alpha * e * (frac * s.mean(dim=0)).sum()
    t = n // n_seq
    ids = topk_ids.reshape(n_seq, t * k)
    frac = torch.stack([_counts(row, e) for row in ids]).to(compute) * (e / (k * t))  # (B, E)
    sn = s / (s.sum(dim=-1, keepdim=True) + NORM_EPS)
    p = sn.reshape(n_seq, t, e).mean(dim=1)  # (B, E)
    return alpha * (frac * p).sum(dim=-1).mean()


