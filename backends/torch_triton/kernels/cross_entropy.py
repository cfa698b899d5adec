"""Cross-entropy in Triton, after Liger-Kernel's ``ops/cross_entropy.py``: online logsumexp.

One program per row streams the vocabulary in blocks (online max and sum, as FlashAttention's
softmax), writes the row's loss and lse; the backward recomputes p = exp(x - lse) per block.
Label smoothing is torch's; z-loss is PaLM's ``z * lse**2``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Vocabulary block per step; 4096 bounds registers at real vocabularies (Liger uses 32768 / 4).
MAX_BLOCK = 4096


@triton.jit
def _cross_entropy_fwd_kernel(x_ptr, t_ptr, loss_ptr, lse_ptr, n_cols, ignore_index,
                              smoothing, z_loss, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * n_cols
    m = tl.full((), float("-inf"), tl.float32)
    d = tl.zeros((), tl.float32)
    total = tl.zeros((), tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        total += tl.sum(tl.where(cols < n_cols, x, 0.0), axis=0)
        m = m_new
    lse = m + tl.log(d)
    t = tl.load(t_ptr + row)
    valid = t != ignore_index
    picked = tl.load(x_row + tl.where(valid, t, 0)).to(tl.float32)
    nll = lse - picked
    smooth = lse - total / n_cols  # -mean_c log p_c
    loss = (1.0 - smoothing) * nll + smoothing * smooth + z_loss * lse * lse
    tl.store(loss_ptr + row, tl.where(valid, loss, 0.0))
    tl.store(lse_ptr + row, lse)


@triton.jit
def _cross_entropy_bwd_kernel(x_ptr, t_ptr, lse_ptr, scale_ptr, dx_ptr, n_cols, ignore_index,
                              smoothing, z_loss, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    t = tl.load(t_ptr + row)
    lse = tl.load(lse_ptr + row)
    # dloss / n for a valid row, 0 for an ignored one
    scale = tl.where(t != ignore_index, tl.load(scale_ptr), 0.0)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        p = tl.exp(x - lse)
        onehot = tl.where(cols == t, 1.0, 0.0)
        g = (1.0 - smoothing) * (p - onehot) + smoothing * (p - 1.0 / n_cols)
        g = (g + 2.0 * z_loss * lse * p) * scale
        # explicit cast: the interpreter stores garbage for an uncast float32 into bfloat16
        tl.store(dx_ptr + row * n_cols + cols, g.to(dx_ptr.dtype.element_ty), mask=mask)


def _block(n_cols: int) -> int:
    return min(MAX_BLOCK, triton.next_power_of_2(n_cols))


def cross_entropy_forward(logits, targets, ignore_index: int, smoothing: float, z_loss: float):
    """logits (N, V), targets (N,) -> (per-row loss (N,) float32, lse (N,) float32)."""
    n, v = logits.shape
    loss = torch.zeros(n, dtype=torch.float32, device=logits.device)
    lse = torch.zeros(n, dtype=torch.float32, device=logits.device)
    if n:
        _cross_entropy_fwd_kernel[(n,)](logits, targets, loss, lse, v, ignore_index, smoothing,
                                        z_loss, BLOCK=_block(v))
    return loss, lse


def cross_entropy_backward(logits, targets, lse, scale, ignore_index: int, smoothing: float,
                           z_loss: float):
    """scale: (1,) float32 holding dloss / n. Returns dlogits (N, V) in the logits' dtype."""
    n, v = logits.shape
    dx = torch.empty_like(logits)
    if n:
        _cross_entropy_bwd_kernel[(n,)](logits, targets, lse, scale, dx, v, ignore_index,
                                        smoothing, z_loss, BLOCK=_block(v))
    return dx


class CrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index: int, smoothing: float, z_loss: float):
        logits, targets = logits.contiguous(), targets.contiguous()
        per_row, lse = cross_entropy_forward(logits, targets, ignore_index, smoothing, z_loss)
        n = (targets != ignore_index).sum().clamp(min=1).to(torch.float32)
        ctx.save_for_backward(logits, targets, lse, n)
        ctx.params = (ignore_index, smoothing, z_loss)
        return per_row.sum() / n

    @staticmethod
    def backward(ctx, dloss):
        logits, targets, lse, n = ctx.saved_tensors
        scale = (dloss.to(torch.float32) / n).reshape(1)
        dx = cross_entropy_backward(logits, targets, lse, scale, *ctx.params)
        return dx, None, None, None, None


def cross_entropy(logits, targets, ignore_index: int, label_smoothing: float, z_loss: float):
    """Mean loss over valid rows of logits (N, V), targets (N,) (arguments already checked)."""
    return CrossEntropyFunction.apply(logits, targets, ignore_index, label_smoothing, z_loss)
