"""Symmetric absmax INT8 quantization in torch: float32 quotient, round half to even."""

from __future__ import annotations

import torch

from lmspec.backends.torch_triton._quant import amax, compute, nonzero_or_one
from lmspec.spec.quant_int8 import QMAX, check_args


def quant_int8(x, *, axis: int = -1):
    check_args(x, axis=axis)
    xf = compute(x)
    axis = axis % x.ndim
    scales = nonzero_or_one((amax(xf, axis) / QMAX).to(torch.float32))  # one rounding
    y = xf / scales.unsqueeze(axis).to(xf.dtype)
    return torch.round(y).clamp(-QMAX, QMAX).to(torch.int8), scales
