"""RMSNorm (Zhang & Sennrich, 2019) via torch.nn.functional.rms_norm."""

from __future__ import annotations

import torch.nn.functional as F

from lmspec.spec.rms_norm import check_args


def rms_norm(x, weight=None, *, eps: float = 1e-6, weight_offset: float = 0.0):
    check_args(x, weight, eps=eps, weight_offset=weight_offset)
    # adapter: torch has no (offset + w) convention (Gemma); pass the effective scale
    scale = None if weight is None else weight_offset + weight
    return F.rms_norm(x, (x.shape[-1],), scale, eps)
