"""RMSNorm reference (Zhang & Sennrich, 2019); Gemma's 1 + w as ``weight_offset``."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import c, f, mean, sqrt, sum_
from lmspec.spec.rms_norm import check_args


def _scale(weight, weight_offset):
    return None if weight is None else f(c(weight_offset) + f(weight))


def rms_norm(x, weight=None, *, eps=1e-6, weight_offset=0.0):
    check_args(x, weight, eps=eps, weight_offset=weight_offset)
    x = f(x)
    rstd = c(1.0) / sqrt(mean(x * x, axis=-1, keepdims=True) + c(eps))  # (..., 1)
    y = f(x * f(rstd))
    w = _scale(weight, weight_offset)
    return y if w is None else f(y * w)


def rms_norm_vjp(dy, x, weight=None, *, eps=1e-6, weight_offset=0.0):
    x, dy = f(x), f(dy)
    d = x.shape[-1]
    rstd = f(c(1.0) / sqrt(mean(x * x, axis=-1, keepdims=True) + c(eps)))
    xhat = f(x * rstd)
    w = _scale(weight, weight_offset)
    g = dy if w is None else f(dy * w)
    # dx = rstd * (g - xhat * mean(g * xhat))
    dx = f(rstd * f(g - f(xhat * mean(g * xhat, axis=-1, keepdims=True))))
    dw = None if weight is None else sum_((dy * xhat).reshape(-1, d), axis=0)
    return {"x": dx, "weight": dw}


__all__ = ["rms_norm", "rms_norm_vjp"]


def rms_norm_vjp_magnitude(dy, x, weight=None, *, eps=1e-6, weight_offset=0.0):
    """Error scale of a correct gradient: rstd (|g| + |xhat| mean|g xhat|), the terms of
    ``g - xhat mean(g xhat)``, which cancel when dy is parallel to x (and always at D = 1)."""
    x, dy = (np.asarray(a, np.float64) for a in (x, dy))
    rstd = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    xhat = x * rstd
    g = np.abs(dy) if weight is None else np.abs(dy * (weight_offset + weight))
    dx = rstd * (g + np.abs(xhat) * np.mean(g * np.abs(xhat), axis=-1, keepdims=True))
    dw = None if weight is None else np.sum(np.abs(dy * xhat).reshape(-1, x.shape[-1]), 0)
    return {"x": dx, "weight": dw}
