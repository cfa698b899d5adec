"""Log-softmax reference: x - max - log(sum(exp(x - max))), never log(softmax(x))."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import exp, f, log, sum_
from lmspec.spec.log_softmax import check_args


def log_softmax(x, *, axis=-1):
    check_args(x, axis=axis)
    x = f(x)
    if x.shape[axis] == 0 or x.size == 0:
        return x.copy()
    shifted = f(x - np.max(x, axis=axis, keepdims=True))
    return f(shifted - log(sum_(exp(shifted), axis=axis, keepdims=True)))


def log_softmax_vjp(dy, x, *, axis=-1):
    y, dy = log_softmax(x, axis=axis), f(dy)
    return {"x": f(dy - f(exp(y) * sum_(dy, axis=axis, keepdims=True)))}


def log_softmax_vjp_magnitude(dy, x, *, axis=-1):
    """Error scale of a correct gradient: |dy| + exp(y) |sum(dy)| (the terms of dy - p sum dy)."""
    y, dy = log_softmax(x, axis=axis), np.asarray(dy, np.float64)
    return {"x": np.abs(dy) + np.exp(y) * np.abs(np.sum(dy, axis=axis, keepdims=True))}
