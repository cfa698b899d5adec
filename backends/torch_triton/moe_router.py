"""MoE router in torch: softmax/sigmoid scores in float32 (HF), selection by a stable descending
sort (ties lowest index first, which torch.topk does not promise), gradients by autograd."""

from __future__ import annotations

import torch

from lmspec.spec.moe_router import NORM_EPS, check_args


def _desc(v: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest along the last axis, descending, equal values lowest first."""
    return torch.sort(v, dim=-1, descending=True, stable=True).indices[..., :k]


def _masked(u: torch.Tensor, n_group: int, topk_group: int, fill: str) -> torch.Tensor:
    """Selection scores with the experts of dropped groups set to 0.0 or -inf."""
    if n_group == 1:
        return u
    n, e = u.shape
    group_score = u.view(n, n_group, e // n_group).topk(2, dim=-1).values.sum(-1)  # (N, G)
    keep = torch.zeros_like(group_score, dtype=torch.bool)
    keep.scatter_(1, _desc(group_score, topk_group), True)
    keep = keep.repeat_interleave(e // n_group, dim=1)  # (N, E)
    return u.masked_fill(~keep, 0.0 if fill == "zero" else float("-inf"))


def moe_router(logits, bias=None, *, top_k: int, score_func: str = "softmax",
               norm_topk_prob: bool = False, n_group: int = 1, topk_group: int = 1,
               routed_scaling_factor: float = 1.0, masked_group_fill: str = "zero"):
    check_args(logits, bias, top_k=top_k, score_func=score_func, norm_topk_prob=norm_topk_prob,
               n_group=n_group, topk_group=topk_group,
               routed_scaling_factor=routed_scaling_factor, masked_group_fill=masked_group_fill)
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(compute)  # (N, E)
    s = torch.softmax(x, dim=-1) if score_func == "softmax" else torch.sigmoid(x)
    with torch.no_grad():
        u = s.detach() if bias is None else s.detach() + bias.to(compute)
        ids = _desc(_masked(u, n_group, topk_group, masked_group_fill), top_k)  # (N, k)
    w = s.gather(1, ids)
    if norm_topk_prob:
        w = w / (w.sum(dim=-1, keepdim=True) + NORM_EPS)
    w = w * routed_scaling_factor
    return ids, w.to(logits.dtype), s.to(logits.dtype)
