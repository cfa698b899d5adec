"""Softmax along an axis: torch.softmax forward (max-subtracted), float32 inside, own backward.

The backward is ``dx = y (dy - sum(dy y))`` written out in float32: torch's CPU
``_softmax_backward_data`` measured up to ~2x the naive error bound here on (5, 64) rows.
"""

from __future__ import annotations

import torch

from lmspec.spec.softmax import check_args


class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, axis: int):
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        y = torch.softmax(x, dim=axis, dtype=compute)
        ctx.save_for_backward(y)
        ctx.axis, ctx.x_dtype = axis, x.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        dyf = dy.to(y.dtype)
        dx = y * (dyf - (dyf * y).sum(dim=ctx.axis, keepdim=True))
        return dx.to(ctx.x_dtype), None


def softmax(x, *, axis: int = -1):
    check_args(x, axis=axis)
    return _Softmax.apply(x, axis)
