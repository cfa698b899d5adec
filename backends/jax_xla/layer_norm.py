"""LayerNorm (Ba et al., 2016) in jitted JAX; float32 two-pass statistics, fused backward."""

from __future__ import annotations

import functools

import jax
from jax import lax

from lmspec.backends.jax_xla._common import f32, mean
from lmspec.spec.layer_norm import check_args


def _stats(x, eps: float):
    xf = f32(x)  # (..., D)
    xc = xf - mean(xf)
    # one refinement pass (corrected two-pass): a constant row whose float32 sum rounded
    # leaves a constant residue here, which this removes exactly
    xc = xc - mean(xc)
    rstd = lax.rsqrt(mean(xc * xc) + eps)  # (..., 1)
    return xc * rstd, rstd


def _scale(weight, weight_offset: float):
    return None if weight is None else weight_offset + f32(weight)  # (D,)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _norm(x, weight, bias, eps: float, weight_offset: float):
    y, _ = _stats(x, eps)
    w = _scale(weight, weight_offset)
    if w is not None:
        y = y * w
    if bias is not None:
        y = y + f32(bias)
    return y.astype(x.dtype)


def _norm_fwd(x, weight, bias, eps, weight_offset):
    return _norm(x, weight, bias, eps, weight_offset), (x, weight, bias)


def _norm_bwd(eps, weight_offset, res, dy):
    # dx = rstd * (g - mean(g) - xhat * mean(g * xhat)); dw = sum(dy * xhat); db = sum(dy)
    x, weight, bias = res
    d = x.shape[-1]
    xhat, rstd = _stats(x, eps)
    w = _scale(weight, weight_offset)
    dyf = f32(dy)
    g = dyf if w is None else dyf * w
    gc = g - g.mean(axis=-1, keepdims=True)
    if d == 2:
        # span{1, xhat} is all of R^2: the bracket is gc * (1 - xhat**2) = gc * eps * rstd**2,
        # which the general form computes as a difference of nearly equal terms
        dx = gc * (eps * rstd * rstd * rstd)
    else:
        dx = rstd * (gc - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    dw = None if weight is None else (dyf * xhat).reshape(-1, d).sum(0).astype(weight.dtype)
    db = None if bias is None else dyf.reshape(-1, d).sum(0).astype(bias.dtype)
    return dx.astype(x.dtype), dw, db


_norm.defvjp(_norm_fwd, _norm_bwd)


@functools.partial(jax.jit, static_argnames=("eps", "weight_offset"))
def _layer_norm(x, weight, bias, *, eps: float, weight_offset: float):
    return _norm(x, weight, bias, eps, weight_offset)


def layer_norm(x, weight=None, bias=None, *, eps: float = 1e-5, weight_offset: float = 0.0):
    check_args(x, weight, bias, eps=eps, weight_offset=weight_offset)
    return _layer_norm(x, weight, bias, eps=float(eps), weight_offset=float(weight_offset))
