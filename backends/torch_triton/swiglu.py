"""SwiGLU feed-forward (Shazeer, 2020): torch matmuls; the silu(a) * b gate in Triton on CUDA."""

from __future__ import annotations

import torch.nn.functional as F

from lmspec.backends.torch_triton._dispatch import kernel_dtype, on_cuda
from lmspec.spec.swiglu import check_args


def swiglu(x, w_gate, w_up, w_down):
    return forward(x, w_gate, w_up, w_down, kernel=on_cuda(x, w_gate, w_up, w_down))


def forward(x, w_gate, w_up, w_down, *, kernel: bool):
    """Checks the arguments, then runs the Triton gate (``kernel``) or the torch path."""
    check_args(x, w_gate, w_up, w_down)
    if kernel and kernel_dtype(x):
        from lmspec.backends.torch_triton.kernels.swiglu import swiglu as swiglu_triton

        return swiglu_triton(x, w_gate, w_up, w_down)
    return (F.silu(x @ w_gate) * (x @ w_up)) @ w_down  # (..., F) -> (..., D_out)
