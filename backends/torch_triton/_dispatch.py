"""Which path runs: Triton kernels for CUDA tensors in the kernel dtypes, torch ops otherwise."""

from __future__ import annotations

import torch

# float64 always takes the torch path: the kernels compute in float32.
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def on_cuda(*tensors: torch.Tensor | None) -> bool:
    """True when every given tensor lives on a CUDA device (None entries are skipped)."""
    present = [t for t in tensors if t is not None]
    return bool(present) and all(t.is_cuda for t in present)


def kernel_dtype(t: torch.Tensor) -> bool:
    return t.dtype in KERNEL_DTYPES
