"""Grouped GEMM for the MoE experts in Triton: ``Y[rows of e] = X[rows of e] @ W[e]`` for every
expert in one launch (the ragged "grouped GEMM" of MegaBlocks and vLLM's fused_moe, without
their block-sparse or padded layouts).

Rows of X (M, K) are sorted by expert, ``counts[e]`` rows for expert e (E+1 offsets). The host
cuts every expert's rows into tiles of BLOCK_M rows (``ceil(counts[e] / BLOCK_M)`` tiles, none
for an empty expert) and builds two (T,) maps from the offsets: the expert of each tile and
its first row. The grid is (T, ceil(N / BLOCK_N)); a program reads its expert and first row,
masks the rows at or past its expert's end offset (the last tile of a group straddles into the
next group's rows, which it must not compute or write), and walks K in BLOCK_K steps against
W[e] with a float32 accumulator; Y is stored in X's dtype. float32 inputs use IEEE float32
dots (no TF32); the interpreter multiplies bf16 / fp16 operands in float32, which is exact for
their products.

Autograd (``GroupedMatmul``): dX is the same kernel on dY with the transposed weights (a
strided view, no copy); dW[e] = X[rows of e]^T dY[rows of e] is a torch matmul per non-empty
slice (zero for an empty expert).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmspec.backends.torch_triton.kernels.swiglu import SwiGLUGateFunction


@triton.jit
def _grouped_mm_kernel(x_ptr, w_ptr, y_ptr, tile_expert_ptr, tile_start_ptr, offsets_ptr, N, K,
                       stride_xm, stride_xk, stride_we, stride_wk, stride_wn,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       F32: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(tile_expert_ptr + pid_t).to(tl.int64)
    start = tl.load(tile_start_ptr + pid_t).to(tl.int64)
    end = tl.load(offsets_ptr + e + 1).to(tl.int64)  # first row of the next expert
    rm = start + tl.arange(0, BLOCK_M)  # (BM,)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    row_ok = rm < end
    col_ok = rn < N
    w_base = w_ptr + e * stride_we
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)  # (BK,)
        k_ok = rk < K
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :] * stride_xk,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # (BM, BK)
        w = tl.load(w_base + rk[:, None] * stride_wk + rn[None, :] * stride_wn,
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)  # (BK, BN)
        if F32:  # float32 inputs (IEEE, no TF32), or the interpreter on bf16 / fp16 (exact)
            acc += tl.dot(x.to(tl.float32), w.to(tl.float32), input_precision="ieee")
        else:  # bf16 / fp16 tensor cores, float32 accumulation
            acc += tl.dot(x, w)
    # explicit cast: the interpreter stores garbage for an uncast float32 into bfloat16
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def _blocks(x: torch.Tensor, tiles) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K): 64 x 64 x 32 on a GPU, 16 x 16 x 16 in the interpreter, or
    the forced ``tiles`` (powers of two; a GPU's tl.dot needs >= 16)."""
    if tiles is not None:
        return tuple(int(t) for t in tiles)
    return (64, 64, 32) if x.is_cuda else (16, 16, 16)


def tile_map(counts: list[int], block_m: int, device) -> tuple[torch.Tensor, ...]:
    """(tile_expert (T,), tile_start (T,), offsets (E+1,)) int64 for rows grouped by ``counts``:
    ``ceil(counts[e] / block_m)`` tiles per expert, in expert order, built without a sync."""
    n_tiles = sum(-(-c // block_m) for c in counts)
    c = torch.tensor(counts, dtype=torch.int64, device=device)
    offsets = torch.nn.functional.pad(torch.cumsum(c, 0), (1, 0))  # (E+1,)
    per = (c + block_m - 1) // block_m  # tiles of each expert
    expert = torch.repeat_interleave(torch.arange(len(counts), device=device), per,
                                     output_size=n_tiles)
    first = torch.cumsum(per, 0) - per  # first tile of each expert
    start = offsets[expert] + (torch.arange(n_tiles, device=device) - first[expert]) * block_m
    return expert, start, offsets


def grouped_matmul(x: torch.Tensor, w: torch.Tensor, counts: list[int],
                   tiles=None) -> torch.Tensor:
    """x (M, K) sorted by expert, ``counts`` (E,) rows each (sum M), w (E, K, N), any strides:
    y (M, N) in x's dtype with ``y[rows of e] = x[rows of e] @ w[e]``, in one launch."""
    m, k = x.shape
    e, kw, n = w.shape
    if kw != k or len(counts) != e or sum(counts) != m or x.dtype != w.dtype:
        raise ValueError(f"grouped_matmul: x {tuple(x.shape)} {x.dtype}, w {tuple(w.shape)} "
                         f"{w.dtype}, counts of length {len(counts)} summing to {sum(counts)}: "
                         f"expected w (E, {k}, N) in x's dtype and E counts summing to {m}")
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y
    if k == 0:
        return y.zero_()
    bm, bn, bk = _blocks(x, tiles)
    expert, start, offsets = tile_map(counts, bm, x.device)
    grid = (expert.numel(), triton.cdiv(n, bn))
    _grouped_mm_kernel[grid](x, w, y, expert, start, offsets, n, k, x.stride(0), x.stride(1),
                             w.stride(0), w.stride(1), w.stride(2), BLOCK_M=bm, BLOCK_N=bn,
                             BLOCK_K=bk, F32=x.dtype == torch.float32 or not x.is_cuda)
    return y


class GroupedMatmul(torch.autograd.Function):
    """``grouped_matmul`` with gradients: dx by the kernel on the transposed weights, dw by a
    torch matmul per non-empty slice."""

    @staticmethod
    def forward(ctx, x, w, counts, tiles):
        ctx.save_for_backward(x, w)
        ctx.counts, ctx.tiles = counts, tiles
        return grouped_matmul(x, w, counts, tiles)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = grouped_matmul(dy, w.transpose(1, 2), ctx.counts, ctx.tiles)
        if ctx.needs_input_grad[1]:
            dw = torch.zeros_like(w)
            s = 0
            for e, c in enumerate(ctx.counts):
                if c:
                    dw[e] = x[s:s + c].t() @ dy[s:s + c]
                s += c
        return dx, dw, None, None


def grouped_swiglu(xs, counts: list[int], w_gate, w_up, w_down, *, tiles=None) -> torch.Tensor:
    """The SwiGLU experts on rows ``xs`` (M, D) sorted by expert: two grouped GEMMs (gate and up
    in one, on the weights concatenated to (E, D, 2F)) around the Triton silu(a) * b gate."""
    f = w_gate.shape[-1]
    gu = GroupedMatmul.apply(xs, torch.cat([w_gate, w_up], 2), counts, tiles)  # (M, 2F)
    h = SwiGLUGateFunction.apply(gu[:, :f], gu[:, f:])  # (M, F)
    return GroupedMatmul.apply(h, w_down, counts, tiles)  # (M, D)
