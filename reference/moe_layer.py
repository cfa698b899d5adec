"""MoE layer reference (GShard; Switch; DeepSeekMoE; Qwen-MoE): the plain per-expert loop."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import c, f, matmul, sigmoid, sum_
from lmspec.reference.swiglu import gated_ffn, gated_ffn_vjp, silu, silu_grad
from lmspec.spec.moe_layer import check_args, check_range, expert_capacity


def kept_mask(topk_ids, n_experts: int, capacity: int | None) -> np.ndarray:
    """(N, k) bool: which assignments their expert keeps, claimed in slot-priority order
    (every token's slot 0 in token order, then every token's slot 1, ...)."""
    ids = np.asarray(topk_ids)
    kept = np.ones(ids.shape, dtype=bool)
    if capacity is None:
        return kept
    taken = np.zeros(n_experts, dtype=np.int64)
    for j in range(ids.shape[1]):
        for i in range(ids.shape[0]):
            e = ids[i, j]
            kept[i, j] = taken[e] < capacity
            taken[e] += kept[i, j]
    return kept


def _checked(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared, shared_gate,
             capacity_factor):
    check_args(x, topk_ids, topk_weights, w_gate, w_up, w_down, *shared, shared_gate,
               capacity_factor=capacity_factor)
    ids = np.asarray(topk_ids)
    if ids.size:
        check_range(int(ids.min()), int(ids.max()), w_gate.shape[0])
    n, k = ids.shape
    e = w_gate.shape[0]
    return kept_mask(ids, e, expert_capacity(n, k, e, capacity_factor))


def _shared(x, shared, shared_gate):
    """The shared expert's output (N, D), its ungated FFN output and its gate (N, 1)."""
    y = gated_ffn(x, *shared, silu)
    if shared_gate is None:
        return y, y, None
    g = sigmoid(matmul(x, shared_gate))  # (N, 1)
    return f(g * y), y, g


def moe_layer(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate=None,
              shared_w_up=None, shared_w_down=None, shared_gate=None, *,
              capacity_factor=None):
    shared = (shared_w_gate, shared_w_up, shared_w_down)
    kept = _checked(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared, shared_gate,
                    capacity_factor)
    x, w = f(x), f(topk_weights)
    n, k = kept.shape
    # one row per (token, slot), plus one for the shared expert; summed at the end
    parts = np.zeros((n, k + 1, x.shape[1]), dtype=x.dtype)
    for e in range(w_gate.shape[0]):
        rows, slots = np.nonzero((np.asarray(topk_ids) == e) & kept)
        y = gated_ffn(x[rows], w_gate[e], w_up[e], w_down[e], silu)  # (n_e, D)
        parts[rows, slots] = f(w[rows, slots, None] * y)
    if shared_w_gate is not None:
        parts[:, k] = _shared(x, shared, shared_gate)[0]
    return sum_(parts, axis=1), kept


def moe_layer_vjp(cotangents, x, topk_ids, topk_weights, w_gate, w_up, w_down,
                  shared_w_gate=None, shared_w_up=None, shared_w_down=None, shared_gate=None, *,
                  capacity_factor=None):
    shared = (shared_w_gate, shared_w_up, shared_w_down)
    kept = _checked(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared, shared_gate,
                    capacity_factor)
    dout = f(cotangents[0])  # (N, D); kept carries no gradient
    x, w = f(x), f(topk_weights)
    n, k = kept.shape
    dx_parts = np.zeros((n, k + 1, x.shape[1]), dtype=x.dtype)
    dw = np.zeros((n, k), dtype=x.dtype)
    grads = {name: np.zeros(np.shape(a), dtype=x.dtype)
             for name, a in (("w_gate", w_gate), ("w_up", w_up), ("w_down", w_down))}
    for e in range(w_gate.shape[0]):
        rows, slots = np.nonzero((np.asarray(topk_ids) == e) & kept)
        we = (w_gate[e], w_up[e], w_down[e])
        y = gated_ffn(x[rows], *we, silu)  # (n_e, D)
        dw[rows, slots] = sum_(f(dout[rows] * y), axis=1)
        dy = f(w[rows, slots, None] * dout[rows])  # (n_e, D)
        g = gated_ffn_vjp(dy, x[rows], *we, silu, silu_grad)
        dx_parts[rows, slots] = g["x"]
        for name in grads:
            grads[name][e] = g[name]
    result = {"topk_weights": dw, **grads, "shared_w_gate": None, "shared_w_up": None,
              "shared_w_down": None, "shared_gate": None}
    if shared_w_gate is not None:
        _, y, gate = _shared(x, shared, shared_gate)
        dy = dout if gate is None else f(gate * dout)
        g = gated_ffn_vjp(dy, x, *shared, silu, silu_grad)
        dx_parts[:, k] = g["x"]
        result.update(shared_w_gate=g["w_gate"], shared_w_up=g["w_up"],
                      shared_w_down=g["w_down"])
        if gate is not None:
            dpre = f(sum_(f(dout * y), axis=1, keepdims=True) * f(gate * f(c(1.0) - gate)))
            dx_parts[:, k] = f(dx_parts[:, k] + matmul(dpre, f(shared_gate).T))
            result["shared_gate"] = matmul(x.T, dpre)  # (D, 1)
    result["x"] = sum_(dx_parts, axis=1)
    return result
