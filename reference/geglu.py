"""GeGLU feed-forward reference (Shazeer, 2020): erf or tanh GELU gate."""

from __future__ import annotations

import math

import numpy as np

from lmspec.reference._numerics import c, exp, f, tanh
from lmspec.reference.swiglu import gated_ffn, gated_ffn_vjp
from lmspec.spec.geglu import check_args

_K = math.sqrt(2.0 / math.pi)
_A = 0.044715
_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(a, approximate="tanh"):
    a = f(a)
    if approximate == "none":
        return f(c(0.5) * a * f(c(1.0) + f(_erf(np.asarray(a, np.float64) / math.sqrt(2.0)))))
    u = f(c(_K) * f(a + f(c(_A) * a * a * a)))
    return f(c(0.5) * a * f(c(1.0) + tanh(u)))


def gelu_grad(a, approximate="tanh"):
    a = f(a)
    if approximate == "none":
        cdf = f(c(0.5) * f(c(1.0) + f(_erf(np.asarray(a, np.float64) / math.sqrt(2.0)))))
        pdf = f(exp(f(c(-0.5) * a * a)) * c(1.0 / math.sqrt(2.0 * math.pi)))
        return f(cdf + f(a * pdf))
    t = tanh(f(c(_K) * f(a + f(c(_A) * a * a * a))))
    du = f(c(_K) * f(c(1.0) + f(c(3.0 * _A) * a * a)))
    return f(c(0.5) * f(c(1.0) + t) + f(c(0.5) * a * f(c(1.0) - t * t) * du))


def geglu(x, w_gate, w_up, w_down, *, approximate="tanh"):
    check_args(x, w_gate, w_up, w_down, approximate=approximate)
    return gated_ffn(x, w_gate, w_up, w_down, lambda a: gelu(a, approximate))


def geglu_vjp(dy, x, w_gate, w_up, w_down, *, approximate="tanh"):
    return gated_ffn_vjp(dy, x, w_gate, w_up, w_down, lambda a: gelu(a, approximate),
                         lambda a: gelu_grad(a, approximate))
