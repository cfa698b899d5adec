"""Weight-only quantized matmul: dequantize + float32 matmul in torch, the Triton kernel on CUDA.

The torch path dequantizes the whole weight to float32 (exact: a 4- or 8-bit code times a
scale) and multiplies in float32, rounding the output once to x's dtype; the gradient is
``dx = dy @ W`` (codes, scales and zero points are frozen). W8A8 quantizes the activations
per token and multiplies int8 by int8 with torch._int_mm (int32 accumulation; CPU and CUDA).
"""

from __future__ import annotations

import torch

from lmspec.backends.torch_triton._dispatch import kernel_dtype, on_cuda
from lmspec.spec.quant_matmul import check_args


def quant_matmul(x, packed, scales, zeros=None, *, bits: int = 4, group_size: int = 128,
                 mode: str = "weight_only"):
    return forward(x, packed, scales, zeros, bits, group_size, mode,
                   kernel=on_cuda(x, packed, scales, zeros))


def forward(x, packed, scales, zeros, bits: int, group_size: int, mode: str = "weight_only",
            *, kernel: bool):
    """Checks the arguments, then runs the Triton kernel (``kernel``, weight-only) or torch."""
    check_args(x, packed, scales, zeros, bits=bits, group_size=group_size, mode=mode)
    return _QuantMatmul.apply(x, packed, scales, zeros, bits, group_size, mode,
                              kernel and kernel_dtype(x))


def w8a8(x, codes, scales) -> torch.Tensor:
    """Per-token int8 activations (quant_int8's rule, the quotient in float64 so the codes are
    the reference's exactly) times int8 weights: torch._int_mm (int32), then the scales."""
    xd = x.detach().to(torch.float64)  # (M, K)
    sx = (xd.abs().amax(dim=1) / 127).to(torch.float32) if xd.shape[1] else \
        xd.new_zeros(xd.shape[0], dtype=torch.float32)
    sx = torch.where(sx > 0, sx, 1.0)
    xq = torch.round(xd / sx.to(torch.float64)[:, None]).clamp(-127, 127).to(torch.int8)
    acc = torch._int_mm(xq, codes.to(torch.int8).T)  # (M, N) int32, exact
    y = acc.to(torch.float64) * sx.to(torch.float64)[:, None] * scales.to(torch.float64)[:, 0]
    return y.to(x.dtype)


def dequantize(packed, scales, zeros, bits: int, group_size: int) -> torch.Tensor:
    """W (N, K) float32; int4 codes unpacked low nibble first."""
    if bits == 4:
        p = packed.to(torch.int32)  # (N, K/2); any integer dtype in, the value is the byte
        q = torch.stack((p & 0x0F, p >> 4), dim=-1).reshape(p.shape[0], -1)  # (N, K)
        q = q - zeros.to(torch.int32).repeat_interleave(group_size, dim=1)
    else:
        q = packed.to(torch.int32)
    return q.to(torch.float32) * scales.to(torch.float32).repeat_interleave(group_size, dim=1)


class _QuantMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, packed, scales, zeros, bits: int, group_size: int, mode: str,
                kernel: bool):
        ctx.save_for_backward(packed, scales, zeros)
        ctx.bits, ctx.group_size = bits, group_size
        if mode == "w8a8":
            return w8a8(x, packed, scales)
        if kernel:
            from lmspec.backends.torch_triton.kernels.quant_matmul import quant_matmul_fwd

            return quant_matmul_fwd(x, packed, scales, zeros, bits=bits, group_size=group_size)
        w = dequantize(packed, scales, zeros, bits, group_size)
        return (x.to(torch.float32) @ w.T).to(x.dtype)  # (M, N)

    @staticmethod
    def backward(ctx, dy):
        packed, scales, zeros = ctx.saved_tensors
        w = dequantize(packed, scales, zeros, ctx.bits, ctx.group_size)
        dx = (dy.to(torch.float32) @ w).to(dy.dtype)  # (M, K)
        return dx, None, None, None, None, None, None, None  # w8a8: straight through
