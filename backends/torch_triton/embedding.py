"""Embedding lookup; the backward scatter-adds in float32 so repeated ids accumulate exactly."""

from __future__ import annotations

import torch

from lmspec.spec.embedding import check_args, check_range


class _Embedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)  # (N,)
        ctx.save_for_backward(flat)
        ctx.table_shape = table.shape
        return table.index_select(0, flat).reshape(*ids.shape, table.shape[1])  # (..., D)

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        (flat,) = ctx.saved_tensors
        v, d = ctx.table_shape
        # float32 accumulation: a low-precision index_add_ rounds after every repeated id
        acc = torch.float64 if dout.dtype == torch.float64 else torch.float32
        dtable = torch.zeros((v, d), dtype=acc, device=dout.device)
        dtable.index_add_(0, flat, dout.reshape(-1, d).to(acc))
        return None, dtable.to(dout.dtype)


def embedding(ids, table):
    check_args(ids, table)
    if ids.numel():
        check_range(int(ids.min()), int(ids.max()), table.shape[0])
    return _Embedding.apply(ids.long(), table)
