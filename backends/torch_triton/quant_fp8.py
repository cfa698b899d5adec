"""FP8 E4M3/E5M2 quantization in torch: per tensor, token, 1x128 tile, 128x128 block (DeepSeek-V3),
optional power-of-two scale, explicit saturation before the float8 cast."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmspec.backends.torch_triton._quant import (
    FP8_MAX,
    amax,
    ceil_pow2,
    compute,
    fp8_codes,
    nonzero_or_one,
)
from lmspec.spec.quant_fp8 import BLOCK, TILE, check_args


def _group_amax(xf: torch.Tensor, granularity: str) -> torch.Tensor:
    if granularity == "tensor":
        return amax(xf.reshape(-1), 0)
    if granularity == "token":
        return amax(xf, -1)
    if granularity == "tile":  # (..., D) -> (..., ceil(D / 128), 128), zero-padded
        d = xf.shape[-1]
        t = F.pad(xf, (0, -d % TILE)).reshape(*xf.shape[:-1], -(-d // TILE), TILE)
        return amax(t, -1)
    m, n = xf.shape  # (out, in) -> (ceil(out/128), 128, ceil(in/128), 128)
    b = F.pad(xf, (0, -n % BLOCK, 0, -m % BLOCK))
    b = b.reshape(-(-m // BLOCK), BLOCK, -(-n // BLOCK), BLOCK).abs()
    return b.amax(dim=(1, 3)) if b.numel() else b.new_zeros(b.shape[0], b.shape[2])


def _expand(s: torch.Tensor, shape: torch.Size, granularity: str) -> torch.Tensor:
    if granularity == "tensor":
        return s
    if granularity == "token":
        return s[..., None]
    if granularity == "tile":
        return s.repeat_interleave(TILE, dim=-1)[..., : shape[-1]]
    s = s.repeat_interleave(BLOCK, dim=0).repeat_interleave(BLOCK, dim=1)
    return s[: shape[0], : shape[1]]


def quant_fp8(x, scale=None, *, fmt: str = "e4m3", granularity: str = "tensor",
              pow2_scale: bool = False):
    check_args(x, scale, fmt=fmt, granularity=granularity, pow2_scale=pow2_scale)
    xf = compute(x)
    if scale is None:
        scales = nonzero_or_one((_group_amax(xf, granularity) / FP8_MAX[fmt]).to(torch.float32))
        scales = ceil_pow2(scales) if pow2_scale else scales
    else:
        scales = scale.to(torch.float32)
    y = xf / _expand(scales, x.shape, granularity).to(xf.dtype)
    return fp8_codes(y, fmt), scales
