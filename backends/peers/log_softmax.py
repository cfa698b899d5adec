"""Log-softmax via torch.nn.functional.log_softmax."""

from __future__ import annotations

import torch.nn.functional as F

from lmspec.spec.log_softmax import check_args


def log_softmax(x, *, axis: int = -1):
    check_args(x, axis=axis)
    return F.log_softmax(x, dim=axis)
