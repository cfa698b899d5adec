"""Attention merge reference: combine split-KV partial outputs by their log-sum-exps."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import c, exp, f, log, sum_
from lmspec.spec.attention_merge import check_args


def _weights(lses):
    """w_s = exp(lse_s - lse) (S, B, T, H) and lse (B, T, H); all-(-inf) rows: w 0, lse -inf."""
    lv = f(lses)
    m = np.max(lv, axis=0, initial=-np.inf)  # (B, T, H)
    m = f(np.where(np.isfinite(m), m, 0.0))  # a dead row: any finite shift
    e = exp(f(lv - m))  # exp(-inf) = 0 for a dead split
    total = sum_(e, axis=0)
    seen = total > 0
    safe = np.where(seen, total, c(1.0))
    lse = np.where(seen, f(m + log(safe)), -np.inf)
    return f(e / safe), f(lse)


def attention_merge(outs, lses):
    check_args(outs, lses)
    w, lse = _weights(lses)
    out = sum_(f(w[..., None] * f(outs)), axis=0)  # (B, T, H, D)
    return out, lse


def attention_merge_vjp(cotangents, outs, lses):
    dout, dlse = (f(t) for t in cotangents)  # (B, T, H, D), (B, T, H)
    w, lse = _weights(lses)
    o = f(outs)
    out = sum_(f(w[..., None] * o), axis=0)
    douts = f(w[..., None] * dout)  # (S, B, T, H, D)
    dlse = np.where(np.isfinite(lse), dlse, c(0.0))  # a cotangent on -inf lse is ignored
    inner = sum_(f(dout * f(o - out)), axis=-1)  # <dout, out_s - out>  (S, B, T, H)
    return {"outs": douts, "lses": f(w * f(dlse + inner))}


def attention_merge_magnitude(outs, lses):
    """Error scale: the weighted sum of |out_s| for out; |m| + |log sum| for lse."""
    w, lse = _weights(lses)
    out = np.sum(w[..., None] * np.abs(np.asarray(outs, np.float64)), axis=0)
    return out, np.where(np.isfinite(lse), np.abs(lse) + 1.0, 0.0)


def attention_merge_vjp_magnitude(cotangents, outs, lses):
    dout, dlse = (np.abs(np.asarray(t, np.float64)) for t in cotangents)
    w, _ = _weights(lses)
    o = np.abs(np.asarray(outs, np.float64))
    out = np.sum(w[..., None] * o, axis=0)
    inner = np.sum(dout * (o + out), axis=-1)
    return {"outs": w[..., None] * dout, "lses": w * (dlse + inner)}
