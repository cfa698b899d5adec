"""RMSNorm in Triton (Zhang & Sennrich, 2019), after Liger-Kernel's ``ops/rms_norm.py``.

One program per row; float32 statistics; the weight gradient is summed per program over its
rows, then across programs in torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_fwd_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, n_cols, eps, offset,
                         HAS_WEIGHT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    y = x * rstd
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        y = y * (w + offset)
    tl.store(rstd_ptr + row, rstd)
    # explicit cast: the interpreter stores garbage for an uncast float32 into bfloat16
    tl.store(y_ptr + row * n_cols + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_bwd_kernel(dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_ptr, n_rows, n_cols,
                         eps, offset, rows_per_program, HAS_WEIGHT: tl.constexpr,
                         ONE_COL: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.zeros((BLOCK,), dtype=tl.float32) + 1.0
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) + offset
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(rows_per_program):
        row = pid * rows_per_program + i
        if row < n_rows:
            x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + row)
            xhat = x * rstd
            g = dy * w
            if ONE_COL:
                # D = 1: 1 - xhat**2 = eps * rstd**2 exactly; the general form cancels to noise
                dx = g * eps * rstd * rstd * rstd
            else:
                # dx = rstd * (g - xhat * mean(g * xhat))
                dx = rstd * (g - xhat * (tl.sum(g * xhat, axis=0) / n_cols))
            tl.store(dx_ptr + row * n_cols + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            dw += dy * xhat
    tl.store(dw_ptr + pid * n_cols + cols, dw, mask=mask)


def _programs(n_rows: int, device: torch.device) -> int:
    """Programs for the backward: one per SM on a GPU (Liger's choice), a few in the interpreter."""
    if device.type == "cuda":
        return min(n_rows, torch.cuda.get_device_properties(device).multi_processor_count)
    return min(n_rows, 4)


def rms_norm_forward(x, weight, eps: float, weight_offset: float):
    """x (..., D) -> (y (..., D), x2d (N, D), rstd (N,) float32)."""
    d = x.shape[-1]
    x2d = x.reshape(-1, d).contiguous()  # (N, D)
    y = torch.empty_like(x2d)
    rstd = torch.empty(x2d.shape[0], dtype=torch.float32, device=x.device)
    if x2d.shape[0]:
        _rms_norm_fwd_kernel[(x2d.shape[0],)](
            x2d, x2d if weight is None else weight.contiguous(), y, rstd, d, eps,
            weight_offset, HAS_WEIGHT=weight is not None, BLOCK=triton.next_power_of_2(d))
    return y.reshape(x.shape), x2d, rstd


def rms_norm_backward(dy, x2d, weight, rstd, eps: float, weight_offset: float):
    """dy (..., D) -> (dx (..., D), dweight (D,) or None)."""
    n, d = x2d.shape
    dy2d = dy.reshape(n, d).contiguous()
    dx = torch.empty_like(x2d)
    programs = _programs(n, x2d.device)
    dw_partial = torch.zeros((max(programs, 1), d), dtype=torch.float32, device=x2d.device)
    if n:
        _rms_norm_bwd_kernel[(programs,)](
            dy2d, x2d, x2d if weight is None else weight.contiguous(), rstd, dx, dw_partial, n,
            d, eps, weight_offset, triton.cdiv(n, programs), HAS_WEIGHT=weight is not None,
            ONE_COL=d == 1, BLOCK=triton.next_power_of_2(d))
    dw = None if weight is None else dw_partial.sum(0).to(weight.dtype)
    return dx.reshape(dy.shape), dw


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float, weight_offset: float):
        y, x2d, rstd = rms_norm_forward(x, weight, eps, weight_offset)
        ctx.save_for_backward(x2d, weight, rstd)
        ctx.eps, ctx.weight_offset = eps, weight_offset
        return y

    @staticmethod
    def backward(ctx, dy):
        x2d, weight, rstd = ctx.saved_tensors
        dx, dw = rms_norm_backward(dy, x2d, weight, rstd, ctx.eps, ctx.weight_offset)
        return dx, dw, None, None


def rms_norm(x, weight=None, *, eps: float = 1e-6, weight_offset: float = 0.0):
    """RMSNorm over the last axis with the Triton kernels (arguments already checked)."""
    return RMSNormFunction.apply(x, weight, eps, weight_offset)
