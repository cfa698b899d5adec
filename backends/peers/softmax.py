"""Softmax via torch.softmax (max-subtracted inside torch)."""

from __future__ import annotations

import torch

from lmspec.spec.softmax import check_args


def softmax(x, *, axis: int = -1):
    check_args(x, axis=axis)
    return torch.softmax(x, dim=axis)
