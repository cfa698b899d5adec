"""Softmax reference: exp(x - max) / sum, along one axis."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import exp, f, sum_
from lmspec.spec.softmax import check_args


def softmax(x, *, axis=-1):
    check_args(x, axis=axis)
    x = f(x)
    if x.shape[axis] == 0 or x.size == 0:
        return x.copy()
    e = exp(x - np.max(x, axis=axis, keepdims=True))
    return f(e / sum_(e, axis=axis, keepdims=True))


def softmax_vjp(dy, x, *, axis=-1):
    y, dy = softmax(x, axis=axis), f(dy)
    return {"x": f(y * f(dy - sum_(dy * y, axis=axis, keepdims=True)))}


def softmax_vjp_magnitude(dy, x, *, axis=-1):
    """Error scale of a correct gradient: ``dy - sum(dy y)`` cancels on a near one-hot row,
    while each term is only known to ulps of its own size: y (|dy| + |sum(dy y)|)."""
    y, dy = softmax(x, axis=axis), np.asarray(dy, np.float64)
    return {"x": y * (np.abs(dy) + np.abs(np.sum(dy * y, axis=axis, keepdims=True)))}
