"""Precision control for the reference: exact in float64, or 'naive' in a lower dtype.

The reference computes in the *compute dtype* (float64 unless told otherwise). Under
``computing_in(dtype)`` every array and constant is rounded to that dtype after every op,
while sums and matrix products accumulate in float32 before rounding (as every real kernel
does): that is the naive baseline of the tolerance policy (DESIGN.md).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import numpy as np

# a numpy dtype is immutable, so the shared default is safe
_COMPUTE = contextvars.ContextVar("lmspec_reference_dtype", default=np.dtype(np.float64))  # noqa: B039


@contextlib.contextmanager
def computing_in(dtype) -> Iterator[None]:
    """Evaluate the reference in ``dtype`` (a NumPy or ml_dtypes dtype) inside the block."""
    token = _COMPUTE.set(np.dtype(dtype))
    try:
        yield
    finally:
        _COMPUTE.reset(token)


def dt() -> np.dtype:
    return _COMPUTE.get()


def _acc() -> np.dtype:
    return np.dtype(np.float64) if dt() == np.float64 else np.dtype(np.float32)


def f(x) -> np.ndarray:
    """An array (or scalar) rounded to the compute dtype."""
    return np.asarray(x).astype(dt())


def c(v: float) -> np.ndarray:
    """A constant in the compute dtype (a bare Python float would promote bfloat16 arrays)."""
    return np.asarray(v, dtype=dt())


def sum_(x, axis=None, keepdims: bool = False) -> np.ndarray:
    return f(np.sum(np.asarray(x, dtype=_acc()), axis=axis, keepdims=keepdims))


def mean(x, axis=None, keepdims: bool = False) -> np.ndarray:
    x = np.asarray(x, dtype=_acc())
    n = x.shape[axis] if axis is not None else x.size
    return f(np.sum(x, axis=axis, keepdims=keepdims) / n)


def matmul(a, b) -> np.ndarray:
    return f(np.matmul(np.asarray(a, dtype=_acc()), np.asarray(b, dtype=_acc())))


def einsum(spec: str, *ops) -> np.ndarray:
    return f(np.einsum(spec, *(np.asarray(o, dtype=_acc()) for o in ops)))


def exp(x) -> np.ndarray:
    return f(np.exp(f(x)))


def log(x) -> np.ndarray:
    return f(np.log(f(x)))


def log1p(x) -> np.ndarray:
    return f(np.log1p(f(x)))


def softplus(x) -> np.ndarray:
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow, and e^x's relative accuracy for
    x << 0 (so -log sigmoid(x) = softplus(-x) keeps it too)."""
    x = f(x)
    return f(np.maximum(x, c(0.0)) + log1p(exp(-np.abs(x))))


def sqrt(x) -> np.ndarray:
    return f(np.sqrt(f(x)))


def tanh(x) -> np.ndarray:
    return f(np.tanh(f(x)))


def sigmoid(x) -> np.ndarray:
    """1 / (1 + e^-x), as e^x / (1 + e^x) for x < 0: neither branch overflows, and small values
    keep their relative accuracy (1 - 1/(1 + e^|x|) cancels to 0 below x ~ -37 in float64)."""
    x = f(x)
    e = f(np.exp(-np.abs(x)))
    return f(np.where(x >= 0, c(1.0) / f(c(1.0) + e), e / f(c(1.0) + e)))
