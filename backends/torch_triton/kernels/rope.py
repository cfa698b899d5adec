"""RoPE in Triton (Su et al., 2021), after Liger-Kernel's ``ops/rope.py``; half-split, interleaved.

One program per (b, t) row rotates all its heads; cos and sin (B*T, r/2) come in float32 from
``backends/torch_triton/rope.py`` (angles formed in float64, so large positions stay exact).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmspec.backends.torch_triton.rope import cos_sin


@triton.jit
def _rotate(x_ptr, y_ptr, cos_ptr, sin_ptr, n_heads, head_dim, half, sign,
            INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr):
    """y = R(sign * angle) x on the first 2 * half features of every head of one row."""
    row = tl.program_id(0).to(tl.int64)
    h = tl.arange(0, BLOCK_H)[:, None]  # (BLOCK_H, 1)
    i = tl.arange(0, BLOCK_R)[None, :]  # (1, BLOCK_R)
    mask = (h < n_heads) & (i < half)
    cos = tl.load(cos_ptr + row * half + i, mask=i < half, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + row * half + i, mask=i < half, other=0.0).to(tl.float32) * sign
    if INTERLEAVED:
        iu = 2 * i
        iv = 2 * i + 1
    else:
        iu = i
        iv = i + half
    base = row * n_heads * head_dim + h * head_dim  # (BLOCK_H, 1)
    u = tl.load(x_ptr + base + iu, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(x_ptr + base + iv, mask=mask, other=0.0).to(tl.float32)
    # explicit casts: the interpreter stores garbage for an uncast float32 into bfloat16
    tl.store(y_ptr + base + iu, (u * cos - v * sin).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + base + iv, (u * sin + v * cos).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_fwd_kernel(x_ptr, y_ptr, cos_ptr, sin_ptr, n_heads, head_dim, half,
                     INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr):
    _rotate(x_ptr, y_ptr, cos_ptr, sin_ptr, n_heads, head_dim, half, 1.0, INTERLEAVED, BLOCK_H,
            BLOCK_R)


@triton.jit
def _rope_bwd_kernel(dy_ptr, dx_ptr, cos_ptr, sin_ptr, n_heads, head_dim, half,
                     INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr):
    # the transpose of a rotation is the rotation by the opposite angle
    _rotate(dy_ptr, dx_ptr, cos_ptr, sin_ptr, n_heads, head_dim, half, -1.0, INTERLEAVED,
            BLOCK_H, BLOCK_R)


def _launch(kernel, src, cos, sin, r: int, interleaved: bool) -> torch.Tensor:
    """Rotate the first r features of src (B, T, H, D); features r.. are copied unchanged."""
    src = src.contiguous()
    b, t, h, d = src.shape
    dst = torch.empty_like(src)
    if r < d:
        dst[..., r:] = src[..., r:]
    if src.numel():
        kernel[(b * t,)](src, dst, cos, sin, h, d, r // 2, INTERLEAVED=interleaved,
                         BLOCK_H=triton.next_power_of_2(h), BLOCK_R=triton.next_power_of_2(r // 2))
    return dst


def rope_forward(x, cos, sin, r: int, interleaved: bool) -> torch.Tensor:
    return _launch(_rope_fwd_kernel, x, cos, sin, r, interleaved)


def rope_backward(dy, cos, sin, r: int, interleaved: bool) -> torch.Tensor:
    return _launch(_rope_bwd_kernel, dy, cos, sin, r, interleaved)


class RopeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin, r: int, interleaved: bool):
        ctx.save_for_backward(cos, sin)
        ctx.r, ctx.interleaved = r, interleaved
        return rope_forward(x, cos, sin, r, interleaved)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return rope_backward(dy, cos, sin, ctx.r, ctx.interleaved), None, None, None, None


def rope(x, positions, r: int, theta: float, interleaved: bool, scaling):
    """RoPE with the Triton kernels (arguments already checked); r is the rotary dimension."""
    cos, sin = cos_sin(positions, r, theta, scaling, torch.float32)  # (B, T, r/2)
    half = r // 2
    return RopeFunction.apply(x, cos.reshape(-1, half).contiguous(),
                              sin.reshape(-1, half).contiguous(), r, interleaved)
