"""LayerNorm reference (Ba et al., 2016): population variance, eps inside the root."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import c, f, mean, sqrt, sum_
from lmspec.spec.layer_norm import check_args


def _normalise(x, eps):
    xc = f(x - mean(x, axis=-1, keepdims=True))
    rstd = f(c(1.0) / sqrt(mean(xc * xc, axis=-1, keepdims=True) + c(eps)))  # (..., 1)
    return f(xc * rstd), rstd


def layer_norm(x, weight=None, bias=None, *, eps=1e-5, weight_offset=0.0):
    check_args(x, weight, bias, eps=eps, weight_offset=weight_offset)
    y, _ = _normalise(f(x), eps)
    if weight is not None:
        y = f(y * f(c(weight_offset) + f(weight)))
    if bias is not None:
        y = f(y + f(bias))
    return y


def layer_norm_vjp(dy, x, weight=None, bias=None, *, eps=1e-5, weight_offset=0.0):
    x, dy = f(x), f(dy)
    d = x.shape[-1]
    xhat, rstd = _normalise(x, eps)
    g = dy if weight is None else f(dy * f(c(weight_offset) + f(weight)))
    # dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    inner = f(g - mean(g, axis=-1, keepdims=True))
    dx = f(rstd * f(inner - f(xhat * mean(g * xhat, axis=-1, keepdims=True))))
    flat_dy = dy.reshape(-1, d)
    return {
        "x": dx,
        "weight": None if weight is None else sum_(flat_dy * xhat.reshape(-1, d), axis=0),
        "bias": None if bias is None else sum_(flat_dy, axis=0),
    }


def layer_norm_vjp_magnitude(dy, x, weight=None, bias=None, *, eps=1e-5, weight_offset=0.0):
    """Error scale of a correct gradient: rstd (|g| + mean|g| + |xhat| mean|g xhat|), the
    terms of ``g - mean(g) - xhat mean(g xhat)`` (which cancel for D <= 2)."""
    x, dy = (np.asarray(a, np.float64) for a in (x, dy))
    d = x.shape[-1]
    xc = x - x.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(np.mean(xc * xc, axis=-1, keepdims=True) + eps)
    xhat = np.abs(xc * rstd)
    g = np.abs(dy) if weight is None else np.abs(dy * (weight_offset + weight))
    dx = rstd * (g + g.mean(-1, keepdims=True) + xhat * np.mean(g * xhat, -1, keepdims=True))
    flat = np.abs(dy).reshape(-1, d)
    return {"x": dx,
            "weight": None if weight is None else np.sum(flat * xhat.reshape(-1, d), axis=0),
            "bias": None if bias is None else np.sum(flat, axis=0)}
