"""LayerNorm (Ba et al., 2016): centred two-pass statistics and backward, float32 inside.

Not torch.nn.functional.layer_norm: its CPU kernel forms ``x * rstd - mean * rstd``, which
leaves rounding noise where the exact answer is 0 (D = 1, constant rows), and its backward
does the same; the shifted, centred form below gives those zeros exactly.
"""

from __future__ import annotations

import torch

from lmspec.spec.layer_norm import check_args


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, weight_offset: float):
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        xf = x.to(compute)  # (..., D)
        xc = xf - xf[..., :1]  # shifted first: a constant row centres to exactly 0
        xc = xc - xc.mean(dim=-1, keepdim=True)
        rstd = torch.rsqrt((xc * xc).mean(dim=-1, keepdim=True) + eps)  # (..., 1)
        xhat = xc * rstd
        w = None if weight is None else weight.to(compute) + weight_offset
        y = xhat if w is None else xhat * w
        if bias is not None:
            y = y + bias.to(compute)
        ctx.save_for_backward(xhat, rstd, w)
        ctx.dtypes = (x.dtype, None if weight is None else weight.dtype,
                      None if bias is None else bias.dtype)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        xhat, rstd, w = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        dyf = dy.to(xhat.dtype)  # (..., D)
        g = dyf if w is None else dyf * w
        # dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
        inner = g - g.mean(dim=-1, keepdim=True)
        dx = rstd * (inner - xhat * (g * xhat).mean(dim=-1, keepdim=True))
        d = xhat.shape[-1]
        dw = None if w_dtype is None else (dyf * xhat).reshape(-1, d).sum(0).to(w_dtype)
        db = None if b_dtype is None else dyf.reshape(-1, d).sum(0).to(b_dtype)
        return dx.to(x_dtype), dw, db, None, None


def layer_norm(x, weight=None, bias=None, *, eps: float = 1e-5, weight_offset: float = 0.0):
    check_args(x, weight, bias, eps=eps, weight_offset=weight_offset)
    return _LayerNorm.apply(x, weight, bias, eps, weight_offset)
