"""Attention over an INT8 / FP8 KV cache quantized per (token, head), in torch: the torch
quantizers of quant_int8 / quant_fp8 (float32 quotients), dequantization into q's dtype, then
sdpa's explicit float32 attention path."""

from __future__ import annotations

import math

import torch

from lmspec.backends.torch_triton._quant import fp8_values
from lmspec.backends.torch_triton.quant_fp8 import quant_fp8
from lmspec.backends.torch_triton.quant_int8 import quant_int8
from lmspec.backends.torch_triton.sdpa import _Masks, _math_forward
from lmspec.spec.quant_kv_cache import check_args


def quantize(x: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scales (B, T, H)): one scale per (token, head) row of the last axis."""
    if fmt == "int8":
        return quant_int8(x, axis=-1)
    return quant_fp8(x, fmt=fmt, granularity="token")


def dequantize(codes: torch.Tensor, scales: torch.Tensor, fmt: str, dtype) -> torch.Tensor:
    vals = codes.to(torch.float32) if fmt == "int8" else fp8_values(codes, fmt)
    return (vals * scales[..., None]).to(dtype)


def quant_kv_cache(q, k, v, *, fmt: str = "int8", causal: bool = True,
                   scale: float | None = None):
    check_args(q, k, v, fmt=fmt, causal=causal, scale=scale)
    k_hat = dequantize(*quantize(k, fmt), fmt, q.dtype)  # (B, Tk, Hkv, D)
    v_hat = dequantize(*quantize(v, fmt), fmt, q.dtype)
    b, tq, hq, _ = q.shape
    tk = k.shape[1]
    if tq == 0 or tk == 0:
        return q.new_zeros((b, tq, hq, v.shape[-1]))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    masks = _Masks(tq, tk, None, None, causal, None)
    return _math_forward(q, k_hat, v_hat, masks, None, scale)[0]
