"""FP4 E2M1 quantization in torch: per-tensor E2M1, MXFP4 (E8M0 per 32), NVFP4 (E4M3 per 16
and a float32 tensor scale); codes packed two per byte, low nibble first."""

from __future__ import annotations

import torch

from lmspec.backends.torch_triton._quant import (
    amax,
    compute,
    e2m1_codes,
    fp8_codes,
    fp8_values,
    nonzero_or_one,
    pack_nibbles,
)
from lmspec.spec.quant_fp4 import BLOCK, E2M1_MAX, E4M3_MAX, E8M0_BIAS, MX_EMAX, check_args


def _blocks(xf: torch.Tensor, fmt: str) -> torch.Tensor:
    return xf.reshape(*xf.shape[:-1], xf.shape[-1] // BLOCK[fmt], BLOCK[fmt])


def _mxfp4(xf: torch.Tensor):
    b = _blocks(xf, "mxfp4")  # (..., D/32, 32)
    a = amax(b, -1)
    e = torch.frexp(a)[1].to(torch.int32) - 1 - MX_EMAX  # floor(log2 amax) - 2, exactly
    e = torch.where(a > 0, e, torch.full_like(e, -E8M0_BIAS)).clamp(-E8M0_BIAS, E8M0_BIAS)
    y = torch.ldexp(b, (-e)[..., None].to(b.dtype))  # x / 2**e, exact
    return y.reshape(xf.shape), (e + E8M0_BIAS).to(torch.uint8), xf.new_ones(())


def _nvfp4(xf: torch.Tensor, tensor_scale: float | None):
    if tensor_scale is None:
        t = nonzero_or_one((amax(xf.reshape(-1), 0) / (E2M1_MAX * E4M3_MAX)).to(torch.float32))
    else:
        t = torch.tensor(tensor_scale, dtype=torch.float32, device=xf.device)
    b = _blocks(xf, "nvfp4")  # (..., D/16, 16)
    codes = fp8_codes(amax(b, -1) / (E2M1_MAX * t.to(xf.dtype)), "e4m3")
    s = (fp8_values(codes, "e4m3").to(xf.dtype) * t)[..., None]
    y = torch.where(s > 0, b / torch.where(s > 0, s, 1.0), 0.0)  # code 0 in a zero-scale block
    return y.reshape(xf.shape), codes, t


def quant_fp4(x, *, fmt: str = "mxfp4", tensor_scale: float | None = None):
    check_args(x, fmt=fmt, tensor_scale=tensor_scale)
    xf = compute(x)
    if fmt == "e2m1":
        scales = nonzero_or_one((amax(xf.reshape(-1), 0) / E2M1_MAX).to(torch.float32))
        y, t = xf / scales.to(xf.dtype), xf.new_ones(())
    elif fmt == "mxfp4":
        y, scales, t = _mxfp4(xf)
    else:
        y, scales, t = _nvfp4(xf, tensor_scale)
    return pack_nibbles(e2m1_codes(y)), scales, t.to(torch.float32)
