"""MoE router in jitted JAX: float32 scores, lax.top_k selection (ties lowest index first, as
its documentation states), group-limited masking; gradients by jax.vjp through the weights and
scores (the integer ids take no cotangent)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from lmspec.backends.jax_xla._common import f32
from lmspec.spec.moe_router import NORM_EPS, check_args

# Only what fixes shapes is static; the rest is traced, so that one compilation serves every
# score function, fill, normalization and scaling factor (jit compiles cost ~0.5 s each here).
_STATIC = ("top_k", "n_group", "topk_group")


def _masked(u, n_group: int, topk_group: int, fill):
    """Selection scores with the experts of dropped groups set to ``fill`` (0.0 or -inf)."""
    if n_group == 1:
        return u
    n, e = u.shape
    group_score = lax.top_k(u.reshape(n, n_group, e // n_group), 2)[0].sum(-1)  # (N, G)
    kept = lax.top_k(group_score, topk_group)[1]  # (N, topk_group)
    keep = jax.nn.one_hot(kept, n_group, dtype=jnp.bool_).any(axis=1)  # (N, G)
    keep = jnp.repeat(keep, e // n_group, axis=1)  # (N, E)
    return jnp.where(keep, u, fill)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _route(logits, bias, sigmoid, norm, scale, fill, *, top_k, n_group, topk_group):
    x = f32(logits)  # (N, E)
    s = jnp.where(sigmoid, jax.nn.sigmoid(x), jax.nn.softmax(x, axis=-1))
    u = lax.stop_gradient(s if bias is None else s + f32(bias))
    ids = lax.top_k(_masked(u, n_group, topk_group, fill), top_k)[1]  # (N, k)
    w = jnp.take_along_axis(s, ids, axis=-1)
    w = w / jnp.where(norm, w.sum(axis=-1, keepdims=True) + NORM_EPS, 1.0)
    w = w * scale
    return ids, w.astype(logits.dtype), s.astype(logits.dtype)


def _traced(score_func, norm_topk_prob, routed_scaling_factor, masked_group_fill) -> tuple:
    return (jnp.bool_(score_func == "sigmoid"), jnp.bool_(norm_topk_prob),
            jnp.float32(routed_scaling_factor),
            jnp.float32(0.0 if masked_group_fill == "zero" else -jnp.inf))


def moe_router(logits, bias=None, *, top_k: int, score_func: str = "softmax",
               norm_topk_prob: bool = False, n_group: int = 1, topk_group: int = 1,
               routed_scaling_factor: float = 1.0, masked_group_fill: str = "zero"):
    params = dict(top_k=top_k, score_func=score_func, norm_topk_prob=norm_topk_prob,
                  n_group=n_group, topk_group=topk_group,
                  routed_scaling_factor=routed_scaling_factor,
                  masked_group_fill=masked_group_fill)
    check_args(logits, bias, **params)
    return _route(logits, bias, *_traced(score_func, norm_topk_prob, routed_scaling_factor,
                                         masked_group_fill),
                  top_k=top_k, n_group=n_group, topk_group=topk_group)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _pullback(logits, bias, traced, dw, ds, *, top_k, n_group, topk_group):
    _, pull = jax.vjp(lambda x: _route(x, bias, *traced, top_k=top_k, n_group=n_group,
                                       topk_group=topk_group)[1:], logits)
    return pull((dw.astype(logits.dtype), ds.astype(logits.dtype)))[0]


def moe_router_vjp(cotangents, logits, bias=None, *, top_k: int, score_func: str = "softmax",
                   norm_topk_prob: bool = False, n_group: int = 1, topk_group: int = 1,
                   routed_scaling_factor: float = 1.0, masked_group_fill: str = "zero"):
    """d logits through (topk_weights, scores); the ids' cotangent is ignored."""
    check_args(logits, bias, top_k=top_k, score_func=score_func, norm_topk_prob=norm_topk_prob,
               n_group=n_group, topk_group=topk_group,
               routed_scaling_factor=routed_scaling_factor, masked_group_fill=masked_group_fill)
    _, dw, ds = cotangents
    traced = _traced(score_func, norm_topk_prob, routed_scaling_factor, masked_group_fill)
    return {"logits": _pullback(logits, bias, traced, jnp.asarray(dw), jnp.asarray(ds),
                                top_k=top_k, n_group=n_group, topk_group=topk_group)}
