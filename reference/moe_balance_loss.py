"""MoE balance losses reference: Switch aux loss, DeepSeek-V3 sequence-wise loss, z-loss."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import _acc, c, exp, f, log, sum_
from lmspec.spec.moe_balance_loss import NORM_EPS, check_args, check_ids


def _counts(topk_ids, e: int) -> np.ndarray:
    """(..., E) assignment counts per expert over the leading token axis."""
    ids = np.asarray(topk_ids)
    return np.stack([(ids == i).sum(axis=(-2, -1)) for i in range(e)], axis=-1)


def _lse(x) -> np.ndarray:
    x = f(x)
    top = np.max(x, axis=-1, keepdims=True)
    return f(top[:, 0] + log(sum_(exp(f(x - top)), axis=-1)))


def _normalized(s) -> tuple[np.ndarray, np.ndarray]:
    """s' = s / (sum_j s + 1e-20) and the denominator, the sum accumulated in float32+."""
    acc = _acc()
    den = np.asarray(sum_(s, axis=-1, keepdims=True), acc) + acc.type(NORM_EPS)
    return f(np.asarray(s, acc) / den), den


def moe_balance_loss(scores, topk_ids, *, kind, n_seq=1, alpha=1.0):
    check_args(scores, topk_ids, kind=kind, n_seq=n_seq, alpha=alpha)
    n, e = scores.shape
    if kind != "z":
        check_ids(np.asarray(topk_ids), e)
    if n == 0:
        return f(c(0.0))
    s = f(scores)
    if kind == "z":
        lse = _lse(s)
        return f(c(alpha) * f(sum_(f(lse * lse)) / c(n)))
    k = np.shape(topk_ids)[1]
    if kind == "switch":
        frac = f(_counts(topk_ids, e) / c(n * k))  # (E,)
        p = f(sum_(s, axis=0) / c(n))  # (E,)
        return f(c(alpha * e) * sum_(frac * p))
    t = n // n_seq
    ids = np.asarray(topk_ids).reshape(n_seq, t, k)
    frac = f(_counts(ids, e) * c(e / (k * t)))  # (B, E)
    sn, _ = _normalized(s)
    p = f(sum_(sn.reshape(n_seq, t, e), axis=1) / c(t))  # (B, E)
    per_seq = f(c(alpha) * sum_(frac * p, axis=-1))  # (B,)
    return f(sum_(per_seq) / c(n_seq))


def moe_balance_loss_vjp(dloss, scores, topk_ids, *, kind, n_seq=1, alpha=1.0):
    check_args(scores, topk_ids, kind=kind, n_seq=n_seq, alpha=alpha)
    n, e = scores.shape
    s, g = f(scores), f(dloss)
    if n == 0:
        return {"scores": np.zeros(np.shape(scores), s.dtype)}
    if kind == "z":
        lse = _lse(s)
        p = exp(f(s - lse[:, None]))
        return {"scores": f(f(c(2 * alpha / n) * g) * f(lse[:, None] * p))}
    k = np.shape(topk_ids)[1]
    if kind == "switch":
        frac = f(_counts(topk_ids, e) / c(n * k))  # (E,)
        return {"scores": np.broadcast_to(f(c(alpha * e / n) * g * frac), (n, e)).copy()}
    t = n // n_seq
    frac = f(_counts(np.asarray(topk_ids).reshape(n_seq, t, k), e) * c(e / (k * t)))  # (B, E)
    frac = np.repeat(frac, t, axis=0)  # (N, E): each token's sequence
    sn, den = _normalized(s)
    centred = f(frac - sum_(frac * sn, axis=-1, keepdims=True))
    scaled = f(np.asarray(centred, _acc()) / den)
    return {"scores": f(f(c(alpha / (n_seq * t)) * g) * scaled)}
