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
