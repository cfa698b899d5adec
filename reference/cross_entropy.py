"""Cross-entropy reference: mean over valid targets, torch-style label smoothing, PaLM z-loss."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import c, exp, f, log, mean, sum_
from lmspec.spec.cross_entropy import check_args, check_targets


def _rows(logits, targets, ignore_index):
    v = logits.shape[-1]
    x = f(logits).reshape(-1, v)  # (N, V)
    t = np.asarray(targets).reshape(-1)  # (N,)
    valid = t != ignore_index
    shifted = f(x - np.max(x, axis=-1, keepdims=True, initial=-np.inf))
    lse = f(np.max(x, axis=-1, initial=-np.inf) + log(sum_(exp(shifted), axis=-1)))  # (N,)
    return x, t, valid, lse, max(int(valid.sum()), 1)


def cross_entropy(logits, targets, *, ignore_index=-100, label_smoothing=0.0, z_loss=0.0):
    check_args(logits, targets, ignore_index=ignore_index, label_smoothing=label_smoothing,
               z_loss=z_loss)
    check_targets(np.asarray(targets), logits.shape[-1], ignore_index)
    x, t, valid, lse, n = _rows(logits, targets, ignore_index)
    eps = label_smoothing
    picked = x[np.arange(len(t)), np.where(valid, t, 0)] if len(t) else lse
    nll = f(lse - picked)
    smooth = f(lse - mean(x, axis=-1)) if x.shape[0] else lse
    per = f(f(c(1 - eps) * nll) + f(c(eps) * smooth) + f(c(z_loss) * lse * lse))
    return f(sum_(np.where(valid, per, c(0.0))) / c(n))


def cross_entropy_vjp(dloss, logits, targets, *, ignore_index=-100, label_smoothing=0.0,
                      z_loss=0.0):
    x, t, valid, lse, n = _rows(logits, targets, ignore_index)
    v, eps = x.shape[-1], label_smoothing
    p = exp(x - lse[:, None])  # (N, V)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(t))[valid], t[valid]] = 1
    g = f(f(c(1 - eps) * f(p - onehot)) + f(c(eps) * f(p - c(1.0 / v)))
          + f(c(2 * z_loss) * lse[:, None] * p))
    g = np.where(valid[:, None], g, c(0.0))
    return {"logits": f(g * f(f(dloss) / c(n))).reshape(np.shape(logits))}
