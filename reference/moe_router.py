"""MoE router reference: softmax/sigmoid scores, bias-corrected group-limited top-k selection
(DeepSeek-V3, arXiv:2412.19437), weights from the unbiased scores (HF Mixtral/Qwen3/DeepSeek)."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import _acc, c, f, sigmoid, sum_
from lmspec.reference.softmax import softmax
from lmspec.spec.moe_router import NORM_EPS, check_args


def router_scores(logits, score_func: str) -> np.ndarray:
    """(N, E) softmax or sigmoid of the logits, in the compute dtype."""
    return softmax(f(logits), axis=-1) if score_func == "softmax" else sigmoid(logits)


def selection_scores(scores, bias) -> np.ndarray:
    """u = s + bias, the values the experts are chosen by (bias None: u = s)."""
    return f(scores) if bias is None else f(f(scores) + f(bias))


def _desc_order(v: np.ndarray) -> np.ndarray:
    """Indices of descending v along the last axis, equal values lowest index first."""
    return np.argsort(-np.asarray(v, np.float64), axis=-1, kind="stable")


def kept_groups(u, n_group: int, topk_group: int) -> np.ndarray:
    """(N, n_group) bool: the topk_group groups of largest top-2 sum of u."""
    n, e = u.shape
    grouped = np.asarray(u, np.float64).reshape(n, n_group, e // n_group)
    top2 = -np.sort(-grouped, axis=-1)[..., :2]  # (N, G, 2), exact values of u
    group_score = f(f(top2[..., 0]) + f(top2[..., 1]))
    keep = np.zeros((n, n_group), bool)
    np.put_along_axis(keep, _desc_order(group_score)[:, :topk_group], True, axis=-1)
    return keep


def masked_selection(u, *, n_group: int, topk_group: int, masked_group_fill: str) -> np.ndarray:
    """u with the experts of dropped groups replaced by the fill (0.0 or -inf)."""
    if n_group == 1:
        return f(u)
    e = u.shape[1]
    keep = np.repeat(kept_groups(u, n_group, topk_group), e // n_group, axis=-1)
    fill = c(0.0) if masked_group_fill == "zero" else c(-np.inf)
    return f(np.where(keep, u, fill))


def select(scores, bias, *, top_k: int, n_group: int = 1, topk_group: int = 1,
           masked_group_fill: str = "zero") -> np.ndarray:
    """(N, k) int64 ids: the top_k largest masked selection scores, descending, ties lowest
    index first."""
    u = masked_selection(selection_scores(scores, bias), n_group=n_group, topk_group=topk_group,
                         masked_group_fill=masked_group_fill)
    return _desc_order(u)[:, :top_k].astype(np.int64)


def weights_at(scores, ids, *, norm_topk_prob: bool, routed_scaling_factor: float):
    """(N, k) weights of the given experts: unbiased scores, renormalized, scaled."""
    w = f(np.take_along_axis(f(scores), np.asarray(ids), axis=-1))
    if norm_topk_prob:
        acc = _acc()
        den = np.asarray(sum_(w, axis=-1, keepdims=True), acc) + acc.type(NORM_EPS)
        w = f(np.asarray(w, acc) / den)
    return f(w * c(routed_scaling_factor))


def moe_router(logits, bias=None, *, top_k, score_func="softmax", norm_topk_prob=False,
               n_group=1, topk_group=1, routed_scaling_factor=1.0, masked_group_fill="zero"):
    check_args(logits, bias, top_k=top_k, score_func=score_func, norm_topk_prob=norm_topk_prob,
               n_group=n_group, topk_group=topk_group,
               routed_scaling_factor=routed_scaling_factor, masked_group_fill=masked_group_fill)
    s = router_scores(logits, score_func)
    ids = select(s, bias, top_k=top_k, n_group=n_group, topk_group=topk_group,
                 masked_group_fill=masked_group_fill)
    w = weights_at(s, ids, norm_topk_prob=norm_topk_prob,
                   routed_scaling_factor=routed_scaling_factor)
    return ids, w, s


def _split_cts(cts, shapes):
    _, dw, ds = cts
    return (np.zeros(shapes[0]) if dw is None else dw), (np.zeros(shapes[1]) if ds is None else ds)


def vjp_at(cts, logits, ids, *, score_func="softmax", norm_topk_prob=False,
           routed_scaling_factor=1.0) -> np.ndarray:
    """d logits for the given selection ``ids`` (what ``moe_router_vjp`` uses after routing)."""
    s = router_scores(logits, score_func)
    ids = np.asarray(ids)
    dw, ds = _split_cts(cts, (ids.shape, s.shape))
    g = f(f(dw) * c(routed_scaling_factor))  # (N, k)
    if norm_topk_prob:
        acc = _acc()
        w = f(np.take_along_axis(s, ids, axis=-1))
        den = np.asarray(sum_(w, axis=-1, keepdims=True), acc) + acc.type(NORM_EPS)
        wn = f(np.asarray(w, acc) / den)
        g = f(np.asarray(f(g - sum_(g * wn, axis=-1, keepdims=True)), acc) / den)
    gs = f(ds).copy()
    rows = np.arange(ids.shape[0])[:, None]
    gs[rows, ids] = f(gs[rows, ids] + g)  # ids are distinct within a row
    if score_func == "softmax":
        return f(s * f(gs - sum_(gs * s, axis=-1, keepdims=True)))
    return f(gs * f(s * f(c(1.0) - s)))


def moe_router_vjp(cts, logits, bias=None, *, top_k, score_func="softmax", norm_topk_prob=False,
                   n_group=1, topk_group=1, routed_scaling_factor=1.0, masked_group_fill="zero"):
    """Gradient w.r.t. logits through topk_weights and scores; ``cts`` = (d ids (ignored, may
    be None), d topk_weights, d scores)."""
    ids, _, _ = moe_router(logits, bias, top_k=top_k, score_func=score_func,
                           norm_topk_prob=norm_topk_prob, n_group=n_group, topk_group=topk_group,
                           routed_scaling_factor=routed_scaling_factor,
                           masked_group_fill=masked_group_fill)
    return {"logits": vjp_at(cts, logits, ids, score_func=score_func,
                             norm_topk_prob=norm_topk_prob,
                             routed_scaling_factor=routed_scaling_factor)}


def vjp_magnitude_at(cts, logits, ids, *, score_func="softmax", norm_topk_prob=False,
                     routed_scaling_factor=1.0) -> np.ndarray:
    """Error scale of a correct gradient (float64): the vjp on absolute values, where each
    cancelling difference (g - sum(g wn), gs - sum(gs s), 1 - s) is replaced by the sum of
    its terms' sizes."""
    s = router_scores(np.asarray(logits, np.float64), score_func)
    ids = np.asarray(ids)
    dw, ds = _split_cts(cts, (ids.shape, s.shape))
    g = np.abs(np.asarray(dw, np.float64)) * routed_scaling_factor
    if norm_topk_prob:
        w = np.take_along_axis(s, ids, axis=-1)
        den = w.sum(-1, keepdims=True) + NORM_EPS
        g = (g + (g * w / den).sum(-1, keepdims=True)) / den
    gs = np.abs(np.asarray(ds, np.float64))
    rows = np.arange(ids.shape[0])[:, None]
    gs[rows, ids] += g
    if score_func == "softmax":
        return s * (gs + (gs * s).sum(-1, keepdims=True))
    return gs * s
