"""Log-softmax along an axis: torch.log_softmax (x - logsumexp), float32 inside, own backward."""

from __future__ import annotations

import torch

from lmspec.spec.log_softmax import check_args


class _LogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, axis: int):
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        y = torch.log_softmax(x, dim=axis, dtype=compute)
        ctx.save_for_backward(y)
        ctx.axis, ctx.x_dtype = axis, x.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        dyf = dy.to(y.dtype)
        # dx = dy - exp(y) * sum(dy)
        dx = dyf - torch.exp(y) * dyf.sum(dim=ctx.axis, keepdim=True)
        return dx.to(ctx.x_dtype), None


def log_softmax(x, *, axis: int = -1):
    check_args(x, axis=axis)
    return _LogSoftmax.apply(x, axis)
