"""GeGLU feed-forward (Shazeer, 2020): torch matmuls and a GELU written out from erf / tanh.

F.gelu's vectorised CPU kernel is off by up to ~9 float32 ulp (erf form, forward) and ~9 ulp
(tanh form, backward), measured against float64 here; torch.erf and torch.tanh are ~1 ulp.
"""

from __future__ import annotations

import math

import torch

from lmspec.spec.geglu import check_args

_K = math.sqrt(2.0 / math.pi)


def _gelu(a: torch.Tensor, approximate: str) -> torch.Tensor:
    if approximate == "none":
        return 0.5 * a * (1.0 + torch.erf(a * (1.0 / math.sqrt(2.0))))
    return 0.5 * a * (1.0 + torch.tanh(_K * (a + 0.044715 * a * a * a)))


def geglu(x, w_gate, w_up, w_down, *, approximate: str = "tanh"):
    check_args(x, w_gate, w_up, w_down, approximate=approximate)
    h = _gelu(x @ w_gate, approximate) * (x @ w_up)  # (..., F)
    return h @ w_down  # (..., D_out)
