"""Sequence log-prob reference: target log-softmax summed over the response mask."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import c, exp, f, log, sum_
from lmspec.spec.sequence_logprob import check_args, check_values


def _token_logp(logits, targets, mask):
    """(B, T) log-probs of the targets (0 where mask is 0), the softmax (B, T, V), mask (B, T)."""
    x = f(logits)
    m = np.asarray(mask).astype(np.int64) == 1  # (B, T)
    t = np.where(m, np.asarray(targets), 0)  # masked targets are never read
    top = np.max(x, axis=-1, keepdims=True, initial=-np.inf)  # (B, T, 1)
    shifted = f(x - top)
    log_z = log(sum_(exp(shifted), axis=-1))  # (B, T)
    picked = np.take_along_axis(shifted, t[..., None], axis=-1)[..., 0]  # (B, T)
    logp = np.where(m, f(picked - log_z), c(0.0))
    return logp, exp(shifted - log_z[..., None]), m


def sequence_logprob(logits, targets, mask):
    check_args(logits, targets, mask)
    check_values(np.asarray(targets), np.asarray(mask), logits.shape[-1])
    logp, _, m = _token_logp(logits, targets, mask)
    return sum_(logp, axis=-1), f(np.sum(m, axis=-1))


def sequence_logprob_vjp(cots, logits, targets, mask):
    dlogps = f(cots[0])  # (B,); the counts' cotangent has nothing to flow to
    _, p, m = _token_logp(logits, targets, mask)
    t = np.where(m, np.asarray(targets), 0)
    onehot = np.zeros_like(p)
    np.put_along_axis(onehot, t[..., None], 1, axis=-1)
    g = np.where(m[..., None], f(onehot - p), c(0.0))
    return {"logits": f(g * dlogps[:, None, None])}


def sequence_logprob_vjp_magnitude(cots, logits, targets, mask):
    """``onehot - p`` cancels on a confident row while p is known to ulps of 1 (as in
    cross_entropy): the error scale is the sum of the terms' magnitudes."""
    _, p, m = _token_logp(np.asarray(logits, np.float64), targets, mask)
    t = np.where(m, np.asarray(targets), 0)
    onehot = np.zeros_like(p)
    np.put_along_axis(onehot, t[..., None], 1, axis=-1)
    g = np.abs(np.asarray(cots[0], np.float64))[:, None, None]
    return {"logits": np.where(m[..., None], onehot + p, 0.0) * g}
