"""RMSNorm (Zhang & Sennrich, 2019): a torch autograd.Function, or the Triton kernel on CUDA."""

from __future__ import annotations

import torch

from lmspec.backends.torch_triton._dispatch import kernel_dtype, on_cuda
from lmspec.spec.rms_norm import check_args


def rms_norm(x, weight=None, *, eps: float = 1e-6, weight_offset: float = 0.0):
    return forward(x, weight, eps, weight_offset, kernel=on_cuda(x, weight))


def forward(x, weight, eps: float, weight_offset: float, *, kernel: bool):
    """Checks the arguments, then runs the Triton kernel (``kernel``) or the torch path."""
    check_args(x, weight, eps=eps, weight_offset=weight_offset)
    if kernel and kernel_dtype(x):
        from lmspec.backends.torch_triton.kernels.rms_norm import rms_norm as rms_norm_triton

        return rms_norm_triton(x, weight, eps=eps, weight_offset=weight_offset)
    return _rms_norm_torch(x, weight, eps, weight_offset)


class _RMSNorm(torch.autograd.Function):
    """The torch path, with the reference's backward formula (exact where the answer is 0)."""

    @staticmethod
    def forward(ctx, x, weight, eps: float, weight_offset: float):
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        xf = x.to(compute)  # (..., D), float32 statistics for low precision
        # vector_norm then square: one fused reduction, ~2x faster than F.rms_norm here
        ms = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_().div_(x.shape[-1])
        rstd = ms.add_(eps).rsqrt_()  # (..., 1)
        w = None if weight is None else weight.to(compute) + weight_offset
        y = xf * rstd
        if w is not None:
            y.mul_(w)
        ctx.save_for_backward(x, rstd, w)
        ctx.weight_dtype, ctx.eps = (None if weight is None else weight.dtype), eps
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, rstd, w = ctx.saved_tensors
        xhat = x.to(rstd.dtype) * rstd  # (..., D)
        dyf = dy.to(rstd.dtype)
        g = dyf if w is None else dyf * w
        if x.shape[-1] == 1:
            # D = 1: 1 - xhat**2 = eps * rstd**2 exactly; the general form cancels to noise
            dx = g * ctx.eps * rstd * rstd * rstd
        else:
            # dx = rstd * (g - xhat * mean(g * xhat))
            dx = rstd * (g - xhat * (g * xhat).mean(dim=-1, keepdim=True))
        dw = None
        if w is not None:
            dw = (dyf * xhat).reshape(-1, x.shape[-1]).sum(0).to(ctx.weight_dtype)
        return dx.to(x.dtype), dw, None, None


def _rms_norm_torch(x, weight, eps: float, weight_offset: float):
    return _RMSNorm.apply(x, weight, eps, weight_offset)
