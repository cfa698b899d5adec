"""RMSNorm (Zhang & Sennrich, 2019) in jitted JAX; float32 statistics, fused-kernel backward."""

from __future__ import annotations

import functools

import jax
from jax import lax

from lmspec.backends.jax_xla._common import f32
from lmspec.spec.rms_norm import check_args


def _stats(x, eps: float):
    xf = f32(x)  # (..., D)
    rstd = lax.rsqrt((xf * xf).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
    return xf * rstd, rstd


def _scale(weight, weight_offset: float):
    return None if weight is None else weight_offset + f32(weight)  # (D,)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _norm(x, weight, eps: float, weight_offset: float):
    xhat, _ = _stats(x, eps)
    w = _scale(weight, weight_offset)
    return (xhat if w is None else xhat * w).astype(x.dtype)


def _norm_fwd(x, weight, eps, weight_offset):
    return _norm(x, weight, eps, weight_offset), (x, weight)


def _norm_bwd(eps, weight_offset, res, dy):
    # autodiff of rsqrt(mean(x^2)) cancels two large terms when D is small; this form
    # (Liger's): dx = rstd * (g - xhat * mean(g * xhat)), dw = sum(dy * xhat)
    x, weight = res
    xhat, rstd = _stats(x, eps)
    w = _scale(weight, weight_offset)
    dyf = f32(dy)
    g = dyf if w is None else dyf * w
    if x.shape[-1] == 1:
        # D = 1: 1 - xhat**2 = eps * rstd**2 exactly; the general form cancels to noise there
        dx = g * (eps * rstd * rstd * rstd)
    else:
        dx = rstd * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    dw = None
    if weight is not None:
        dw = (dyf * xhat).reshape(-1, x.shape[-1]).sum(axis=0).astype(weight.dtype)
    return dx.astype(x.dtype), dw


_norm.defvjp(_norm_fwd, _norm_bwd)


@functools.partial(jax.jit, static_argnames=("eps", "weight_offset"))
def _rms_norm(x, weight, *, eps: float, weight_offset: float):
    return _norm(x, weight, eps, weight_offset)


def rms_norm(x, weight=None, *, eps: float = 1e-6, weight_offset: float = 0.0):
    check_args(x, weight, eps=eps, weight_offset=weight_offset)
    return _rms_norm(x, weight, eps=float(eps), weight_offset=float(weight_offset))
