"""Weight-only INT4/INT8 matmul in Triton (the dequantize-in-the-loop design of GPTQ-Triton and
Marlin, without their layouts): ``y = x @ ((q - zero) * scale)^T``.

Each program computes a (BLOCK_M, BLOCK_N) tile of y, walking K in BLOCK_K steps: it loads
the x tile, the codes of the weight tile (int4: the byte ``k // 2`` of each row, low nibble for
even k, high for odd k, unpacked in-register), the per-(row, group) scale and zero point of
every element (gathered: a group may start anywhere in the tile), dequantizes to x's dtype
and accumulates in float32. float32 inputs use IEEE float32 dots (no TF32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _quant_matmul_fwd_kernel(x_ptr, q_ptr, s_ptr, z_ptr, y_ptr, M, N, K, n_groups, group_size,
                             BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_K: tl.constexpr, IEEE: tl.constexpr,
                             UPCAST: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)  # (BK,)
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :],
                    mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)  # (BM, BK)
        wmask = (rk[:, None] < K) & (rn[None, :] < N)  # (BK, BN): W^T tile
        g = rk[:, None] // group_size  # (BK, 1)
        s = tl.load(s_ptr + rn[None, :] * n_groups + g, mask=wmask, other=0.0).to(tl.float32)
        if BITS == 4:
            byte = tl.load(q_ptr + rn[None, :] * (K // 2) + rk[:, None] // 2, mask=wmask,
                           other=0).to(tl.int32)
            q = (byte >> ((rk[:, None] % 2) * 4)) & 0x0F
            z = tl.load(z_ptr + rn[None, :] * n_groups + g, mask=wmask, other=0).to(tl.int32)
            w = (q - z).to(tl.float32) * s
        else:
            q = tl.load(q_ptr + rn[None, :] * K + rk[:, None], mask=wmask, other=0)
            w = q.to(tl.float32) * s
        if IEEE:  # float32 activations: IEEE float32 products, no TF32
            acc += tl.dot(x.to(tl.float32), w, input_precision="ieee")
        elif UPCAST:  # the interpreter multiplies bf16 operands as raw bits: go up, exactly
            w = w.to(x_ptr.dtype.element_ty).to(tl.float32)
            acc += tl.dot(x.to(tl.float32), w, input_precision="ieee")
        else:  # bf16 / fp16 tensor cores, the weight rounded to x's dtype once
            acc += tl.dot(x, w.to(x_ptr.dtype.element_ty))
    # explicit cast: the interpreter stores garbage for an uncast float32 into bfloat16
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def quant_matmul_fwd(x, packed, scales, zeros=None, *, bits: int = 4, group_size: int = 128,
                     block_m: int | None = None, block_n: int | None = None,
                     block_k: int | None = None) -> torch.Tensor:
    """Launch the kernel on x (M, K) and the (N, K) quantized weight; y (M, N) in x's dtype.

    Tiles default to 16 x 64 x 64 on a GPU (decode-sized M) and 16 x 16 x 16 in the interpreter;
    any sizes may be forced (the interpreter takes any, a GPU's tl.dot needs >= 16)."""
    m, k = x.shape
    n = packed.shape[0]
    interp = not x.is_cuda
    bm = block_m or 16
    bn = block_n or (16 if interp else 64)
    bk = block_k or (16 if interp else 64)
    x = x.contiguous()
    codes = packed.to(torch.uint8 if bits == 4 else torch.int8).contiguous()
    zeros = codes if zeros is None else zeros.to(torch.uint8).contiguous()  # unused for int8
    scales = scales.contiguous()
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y
    if k == 0:
        return y.zero_()
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _quant_matmul_fwd_kernel[grid](x, codes, scales, zeros, y, m, n, k, k // group_size,
                                   group_size, BITS=bits, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                                   IEEE=x.dtype == torch.float32, UPCAST=interp)
    return y
