"""Group-wise asymmetric INT4 RTN (GPTQ's grid) in torch, packed two codes per byte."""

from __future__ import annotations

import torch

from lmspec.backends.torch_triton._quant import compute, pack_nibbles
from lmspec.spec.quant_int4 import QMAX, check_args


def quant_int4(w, *, group_size: int = 128):
    check_args(w, group_size=group_size)
    out, n = w.shape
    g = compute(w).reshape(out, n // group_size, group_size)  # (out, G, g)
    lo, hi = g.amin(dim=-1).clamp(max=0), g.amax(dim=-1).clamp(min=0)  # the range holds 0
    scales = ((hi - lo) / QMAX).to(torch.float32)
    degenerate = scales == 0  # all-zero group: GPTQ's [-1, 1]
    lo = torch.where(degenerate, -torch.ones_like(lo), lo)
    scales = torch.where(degenerate, torch.full_like(scales, 2.0 / QMAX), scales)
    s = scales.to(g.dtype)
    zeros = torch.round(-lo / s).clamp(0, QMAX)
    q = (torch.round(g / s[..., None]) + zeros[..., None]).clamp(0, QMAX).to(torch.uint8)
    return pack_nibbles(q.reshape(out, n)), scales, zeros.to(torch.uint8)
