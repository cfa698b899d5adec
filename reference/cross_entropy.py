"""Cross-entropy reference: mean over valid targets, torch-style label smoothing, PaLM z-loss."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import c, exp, f, log, mean, sum_
from lmspec.spec.cross_entropy import check_args, check_targets


def _rows(logits, targets, ignore_index):
    """Rows in shifted space (x - max): the large common offset never enters a difference."""
    v = logits.shape[-1]
    x = f(logits).reshape(-1, v)  # (N, V)
    t = np.asarray(targets).reshape(-1)  # (N,)
    valid = t != ignore_index
    top = np.max(x, axis=-1, keepdims=True, initial=-np.inf)  # (N, 1)
    shifted = f(x - top)
    log_z = log(sum_(exp(shifted), axis=-1))  # (N,) logsumexp of the shifted row
    lse = f(top[:, 0] + log_z)
    return x, shifted, log_z, t, valid, lse, max(int(valid.sum()), 1)


def cross_entropy(logits, targets, *, ignore_index=-100, label_smoothing=0.0, z_loss=0.0):
    check_args(logits, targets, ignore_index=ignore_index, label_smoothing=label_smoothing,
               z_loss=z_loss)
    check_targets(np.asarray(targets), logits.shape[-1], ignore_index)
    x, shifted, log_z, t, valid, lse, n = _rows(logits, targets, ignore_index)
    eps = label_smoothing
    if not len(t):
        return f(c(0.0))
    nll = f(log_z - shifted[np.arange(len(t)), np.where(valid, t, 0)])
    smooth = f(log_z - mean(shifted, axis=-1))
    per = f(f(c(1 - eps) * nll) + f(c(eps) * smooth) + f(c(z_loss) * lse * lse))
    return f(sum_(np.where(valid, per, c(0.0))) / c(n))


def cross_entropy_vjp(dloss, logits, targets, *, ignore_index=-100, label_smoothing=0.0,
                      z_loss=0.0):
    x, shifted, log_z, t, valid, lse, n = _rows(logits, targets, ignore_index)
    v, eps = x.shape[-1], label_smoothing
    p = exp(shifted - log_z[:, None])  # (N, V)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(t))[valid], t[valid]] = 1
    g = f(f(c(1 - eps) * f(p - onehot)) + f(c(eps) * f(p - c(1.0 / v)))
          + f(c(2 * z_loss) * lse[:, None] * p))
    g = np.where(valid[:, None], g, c(0.0))
    return {"logits": f(g * f(f(dloss) / c(n))).reshape(np.shape(logits))}


def cross_entropy_vjp_magnitude(dloss, logits, targets, *, ignore_index=-100,
                                label_smoothing=0.0, z_loss=0.0):
    """Error scale of a correct gradient: ``p - onehot`` cancels to ~1e-6 on a confident row,
    but p is only known to ulps of 1; the scale is the sum of the terms' magnitudes."""
    x, shifted, log_z, t, valid, lse, n = _rows(logits, targets, ignore_index)
    v, eps = x.shape[-1], label_smoothing
    p = np.exp(shifted - log_z[:, None])  # (N, V)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(t))[valid], t[valid]] = 1
    terms = (1 - eps) * (p + onehot) + eps * (p + 1.0 / v) + 2 * z_loss * np.abs(lse)[:, None] * p
    terms = np.where(valid[:, None], terms, 0.0)
    return {"logits": (terms * abs(float(np.asarray(dloss))) / n).reshape(np.shape(logits))}
