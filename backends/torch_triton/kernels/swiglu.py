"""The SwiGLU gate in Triton (Shazeer, 2020), after Liger-Kernel's ``ops/swiglu.py``.

Only the elementwise ``h = silu(a) * b`` and its backward are kernels; the three matmuls stay
torch. float32 math inside; the backward recomputes the sigmoid instead of storing it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Elements per program: 1024 is Liger's block for elementwise gates.
BLOCK = 1024


@triton.jit
def _swiglu_fwd_kernel(a_ptr, b_ptr, h_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    h = a * tl.sigmoid(a) * b
    # explicit cast: the interpreter stores garbage for an uncast float32 into bfloat16
    tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(dh_ptr, a_ptr, b_ptr, da_ptr, db_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    dh = tl.load(dh_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(a)
    # d silu(a) / da = s (1 + a (1 - s))
    da = dh * b * s * (1.0 + a * (1.0 - s))
    db = dh * a * s
    tl.store(da_ptr + offs, da.to(da_ptr.dtype.element_ty), mask=mask)
    tl.store(db_ptr + offs, db.to(db_ptr.dtype.element_ty), mask=mask)


def swiglu_forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a, b (N, F) -> h = silu(a) * b (N, F)."""
    h = torch.empty_like(a)
    if a.numel():
        _swiglu_fwd_kernel[(triton.cdiv(a.numel(), BLOCK),)](a, b, h, a.numel(), BLOCK=BLOCK)
    return h


def swiglu_backward(dh, a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """dh (N, F) -> (da, db) (N, F)."""
    dh = dh.contiguous()
    da, db = torch.empty_like(a), torch.empty_like(b)
    if a.numel():
        _swiglu_bwd_kernel[(triton.cdiv(a.numel(), BLOCK),)](dh, a, b, da, db, a.numel(),
                                                             BLOCK=BLOCK)
    return da, db


class SwiGLUGateFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        a, b = a.contiguous(), b.contiguous()
        ctx.save_for_backward(a, b)
        return swiglu_forward(a, b)

    @staticmethod
    def backward(ctx, dh):
        a, b = ctx.saved_tensors
        return swiglu_backward(dh, a, b)


def swiglu(x, w_gate, w_up, w_down):
    """SwiGLU FFN: torch matmuls around the Triton gate (arguments already checked)."""
    flat = x.reshape(-1, x.shape[-1])  # (N, D)
    h = SwiGLUGateFunction.apply(flat @ w_gate, flat @ w_up)  # (N, F)
    return (h @ w_down).reshape(*x.shape[:-1], w_down.shape[1])  # (..., D_out)
