"""Attention merge (Flash-Decoding's combine, Dao et al. 2023) in torch, with its own backward."""

from __future__ import annotations

import math

import torch

from lmspec.spec.attention_merge import check_args


def attention_merge(outs, lses):
    check_args(outs, lses)
    return _Merge.apply(outs, lses)


def _weights(lses: torch.Tensor, compute: torch.dtype):
    """w_s = exp(lse_s - lse) (S, B, T, H) and lse (B, T, H) in ``compute``; dead rows 0, -inf."""
    lf = lses.to(compute)
    if lf.shape[0] == 0:
        return lf, torch.full(lf.shape[1:], -math.inf, dtype=compute, device=lf.device)
    m = lf.amax(dim=0)
    m = torch.where(torch.isfinite(m), m, 0.0)  # every split dead: any finite shift
    e = torch.exp(lf - m)  # a dead split: exp(-inf) = 0
    total = e.sum(dim=0)
    seen = total > 0
    safe = torch.where(seen, total, 1.0)
    return e / safe, torch.where(seen, m + torch.log(safe), -math.inf)


class _Merge(torch.autograd.Function):
    """out = sum_s w_s out_s; the backward d lses_s = w_s (dlse + <dout, out_s - out>) reads
    out in the compute dtype, not the rounded output."""

    @staticmethod
    def forward(ctx, outs, lses):
        compute = torch.float64 if outs.dtype == torch.float64 else torch.float32
        w, lse = _weights(lses, compute)
        out = (w[..., None] * outs.to(compute)).sum(dim=0)  # (B, T, H, D)
        ctx.save_for_backward(outs, lses)
        return out.to(outs.dtype), lse

    @staticmethod
    def backward(ctx, dout, dlse):
        outs, lses = ctx.saved_tensors
        compute = torch.float64 if outs.dtype == torch.float64 else torch.float32
        w, lse = _weights(lses, compute)
        o = outs.to(compute)
        out = (w[..., None] * o).sum(dim=0)
        dout = dout.to(compute)
        dlse = torch.zeros_like(lse) if dlse is None else dlse.to(compute)
        dlse = torch.where(torch.isfinite(lse), dlse, 0.0)  # a cotangent on -inf is ignored
        inner = (dout * (o - out)).sum(dim=-1)  # <dout, out_s - out>  (S, B, T, H)
        douts = (w[..., None] * dout).to(outs.dtype)
        return douts, (w * (dlse + inner)).to(lses.dtype)
