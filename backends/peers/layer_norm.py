"""LayerNorm (Ba et al., 2016) via torch.nn.functional.layer_norm."""

from __future__ import annotations

import torch.nn.functional as F

from lmspec.spec.layer_norm import check_args


def layer_norm(x, weight=None, bias=None, *, eps: float = 1e-5, weight_offset: float = 0.0):
    check_args(x, weight, bias, eps=eps, weight_offset=weight_offset)
    # adapter: torch has no (offset + w) convention; pass the effective scale
    scale = None if weight is None else weight_offset + weight
    return F.layer_norm(x, (x.shape[-1],), scale, bias, eps)
