"""SwiGLU feed-forward reference (Shazeer, 2020), and the gated-FFN core GeGLU shares."""

from __future__ import annotations

from collections.abc import Callable

from lmspec.reference._numerics import c, f, matmul, sigmoid
from lmspec.spec.swiglu import check_args

Act = Callable[[object], object]


def silu(a):
    return f(a * sigmoid(a))


def silu_grad(a):
    s = sigmoid(a)
    return f(s * f(c(1.0) + f(a * f(c(1.0) - s))))  # s (1 + a (1 - s))


def gated_ffn(x, w_gate, w_up, w_down, act: Act):
    x = f(x)
    flat = x.reshape(-1, x.shape[-1])  # (N, D)
    h = f(act(matmul(flat, w_gate)) * matmul(flat, w_up))  # (N, F)
    return matmul(h, w_down).reshape(x.shape[:-1] + (w_down.shape[1],))


def gated_ffn_vjp(dy, x, w_gate, w_up, w_down, act: Act, act_grad: Act):
    x = f(x)
    flat = x.reshape(-1, x.shape[-1])  # (N, D)
    dyf = f(dy).reshape(-1, w_down.shape[1])  # (N, D_out)
    a, b = matmul(flat, w_gate), matmul(flat, w_up)  # (N, F)
    g = act(a)
    h = f(g * b)
    dh = matmul(dyf, f(w_down).T)
    da, db = f(f(dh * b) * act_grad(a)), f(dh * g)
    dx = f(matmul(da, f(w_gate).T) + matmul(db, f(w_up).T))
    return {"x": dx.reshape(x.shape), "w_gate": matmul(flat.T, da),
            "w_up": matmul(flat.T, db), "w_down": matmul(h.T, dyf)}


def swiglu(x, w_gate, w_up, w_down):
    check_args(x, w_gate, w_up, w_down)
    return gated_ffn(x, w_gate, w_up, w_down, silu)


def swiglu_vjp(dy, x, w_gate, w_up, w_down):
    return gated_ffn_vjp(dy, x, w_gate, w_up, w_down, silu, silu_grad)
