"""Cross-entropy in jitted JAX: ignore index, torch-style label smoothing, PaLM z-loss.

Forward and backward are the fused-kernel formulas (Liger's cross-entropy): the backward is
``((1 - eps)(p - onehot) + eps (p - 1/V) + 2 z lse p) * dloss / n`` on valid rows, 0 elsewhere.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lmspec.backends.jax_xla._common import F32, f32, is_tracer
from lmspec.spec.cross_entropy import IGNORE_INDEX, check_args, check_targets


def _rows(logits, targets, ignore_index: int):
    """x (N, V) float32, targets (N,), valid (N,), e = exp(x - max), its sum, lse, count n."""
    v = logits.shape[-1]
    x = f32(logits).reshape(-1, v)  # (N, V)
    t = targets.reshape(-1)  # (N,)
    valid = t != ignore_index
    m = x.max(axis=-1, keepdims=True)  # (N, 1)
    e = jnp.exp(x - m)
    total = e.sum(axis=-1, keepdims=True)  # (N, 1), >= 1
    lse = (m + jnp.log(total))[:, 0]  # (N,)
    n = jnp.maximum(valid.sum(), 1).astype(F32)
    return x, t, valid, e, total, lse, n


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _loss(logits, targets, ignore_index: int, label_smoothing: float, z_loss: float):
    x, t, valid, _, _, lse, n = _rows(logits, targets, ignore_index)
    eps = label_smoothing
    picked = jnp.take_along_axis(x, jnp.where(valid, t, 0)[:, None], axis=-1)[:, 0]  # (N,)
    per = (1 - eps) * (lse - picked) + eps * (lse - x.mean(axis=-1)) + z_loss * lse * lse
    # ignored rows read column 0, so `per` is finite everywhere and where() is exact
    return jnp.where(valid, per, 0.0).sum() / n


def _loss_fwd(logits, targets, ignore_index, label_smoothing, z_loss):
    return _loss(logits, targets, ignore_index, label_smoothing, z_loss), (logits, targets)


def _loss_bwd(ignore_index, label_smoothing, z_loss, res, dloss):
    logits, targets = res
    x, t, valid, e, total, lse, n = _rows(logits, targets, ignore_index)
    v, eps = x.shape[-1], label_smoothing
    p = e / total  # (N, V)
    onehot = jnp.arange(v)[None, :] == t[:, None]
    # p - onehot at the target is -(1 - p_t) = -sum_{j != t} e_j / total: summed directly, as
    # p_t - 1 cancels to 0 (or noise) when p_t ~ 1 while the true value is, say, -1e-10
    rest = jnp.where(onehot, 0.0, e).sum(axis=-1, keepdims=True) / total  # (N, 1)
    g = ((1 - eps) * jnp.where(onehot, -rest, p) + eps * (p - np.float32(1.0 / v))
         + (2 * z_loss) * lse[:, None] * p)
    g = jnp.where(valid[:, None], g, 0.0) * (f32(dloss) / n)
    return g.reshape(logits.shape).astype(logits.dtype), None


_loss.defvjp(_loss_fwd, _loss_bwd)


@functools.partial(jax.jit, static_argnames=("ignore_index", "label_smoothing", "z_loss"))
def _cross_entropy(logits, targets, *, ignore_index: int, label_smoothing: float,
                   z_loss: float):
    return _loss(logits, targets, ignore_index, label_smoothing, z_loss)


def cross_entropy(logits, targets, *, ignore_index: int = IGNORE_INDEX,
                  label_smoothing: float = 0.0, z_loss: float = 0.0):
    check_args(logits, targets, ignore_index=ignore_index, label_smoothing=label_smoothing,
               z_loss=z_loss)
    if not is_tracer(targets):
        check_targets(np.asarray(targets), logits.shape[-1], ignore_index)
    return _cross_entropy(logits, targets, ignore_index=int(ignore_index),
                          label_smoothing=float(label_smoothing), z_loss=float(z_loss))
