"""Scaled dot-product attention reference: GQA, causal offset, window, segments, softcap, lse."""

from __future__ import annotations

import math

import numpy as np

from lmspec.reference._numerics import c, einsum, exp, f, log, sum_, tanh
from lmspec.spec.sdpa import check_args


def visible(tq: int, tk: int, segment_ids_q=None, segment_ids_kv=None, *, causal=False,
            window=None, batch: int = 1) -> np.ndarray:
    """Boolean (B, 1, Tq, Tk): may query i see key j? Queries sit at positions i + Tk - Tq."""
    pos_q = np.arange(tq)[:, None] + (tk - tq)  # (Tq, 1)
    pos_k = np.arange(tk)[None, :]  # (1, Tk)
    mask = np.ones((tq, tk), dtype=bool)
    if causal:
        mask &= pos_k <= pos_q
    if window is not None:
        mask &= pos_k > pos_q - window
    mask = np.broadcast_to(mask, (batch, 1, tq, tk))
    if segment_ids_q is not None:
        same = np.asarray(segment_ids_q)[:, :, None] == np.asarray(segment_ids_kv)[:, None, :]
        mask = mask & same[:, None, :, :]
    return mask


def _probs(q, k, segment_ids_q, segment_ids_kv, causal, window, softcap, scale):
    """Returns pre-cap scores s0 (B, Hq, Tq, Tk), probabilities p, lse (B, Hq, Tq), k repeated."""
    b, tq, hq, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    kh = np.repeat(f(k), hq // hkv, axis=2)  # (B, Tk, Hq, D): query head h reads kv h // G
    s0 = f(einsum("bqhd,bkhd->bhqk", f(q), kh) * c(scale))
    s = f(c(softcap) * tanh(s0 / c(softcap))) if softcap is not None else s0
    mask = visible(tq, tk, segment_ids_q, segment_ids_kv, causal=causal, window=window, batch=b)
    any_visible = mask.any(axis=-1)  # (B, 1, Tq)
    m = np.where(any_visible, np.max(np.where(mask, s, -np.inf), axis=-1, initial=-np.inf), 0)
    e = np.where(mask, exp(np.where(mask, s - f(m)[..., None], -np.inf)), c(0.0))
    total = sum_(e, axis=-1)  # (B, Hq, Tq)
    p = f(e / np.where(total > 0, total, c(1.0))[..., None])
    with np.errstate(divide="ignore"):
        lse = np.where(total > 0, f(f(m) + log(np.where(total > 0, total, c(1.0)))), -np.inf)
    return s0, s, p, f(lse), kh


def _default_scale(d: int, scale):
    return 1.0 / math.sqrt(d) if scale is None else scale


def sdpa(q, k, v, segment_ids_q=None, segment_ids_kv=None, *, causal=False, window=None,
         softcap=None, scale=None):
    check_args(q, k, v, segment_ids_q, segment_ids_kv, causal=causal, window=window,
               softcap=softcap, scale=scale)
    scale = _default_scale(q.shape[-1], scale)
    _, _, p, lse, _ = _probs(q, k, segment_ids_q, segment_ids_kv, causal, window, softcap, scale)
    vh = np.repeat(f(v), q.shape[2] // k.shape[2], axis=2)  # (B, Tk, Hq, Dv)
    out = einsum("bhqk,bkhd->bqhd", p, vh)  # (B, Tq, Hq, Dv)
    return out, lse.transpose(0, 2, 1)  # lse (B, Tq, Hq)


def _fold_heads(g, hkv):
    """Sum a (B, T, Hq, D) gradient over each KV head's group of query heads."""
    b, t, hq, d = g.shape
    return f(np.asarray(g, np.float64).reshape(b, t, hkv, hq // hkv, d).sum(axis=3))


def sdpa_vjp(cotangents, q, k, v, segment_ids_q=None, segment_ids_kv=None, *, causal=False,
             window=None, softcap=None, scale=None):
    dout, dlse = (f(t) for t in cotangents)  # (B, Tq, Hq, Dv), (B, Tq, Hq)
    scale = _default_scale(q.shape[-1], scale)
    hkv = k.shape[2]
    s0, _, p, _, kh = _probs(q, k, segment_ids_q, segment_ids_kv, causal, window, softcap, scale)
    vh = np.repeat(f(v), q.shape[2] // hkv, axis=2)
    dv = einsum("bhqk,bqhd->bkhd", p, dout)
    dp = einsum("bqhd,bkhd->bhqk", dout, vh)
    row = sum_(f(dp * p), axis=-1, keepdims=True)  # (B, Hq, Tq, 1)
    ds = f(f(p * f(dp - row)) + f(p * dlse.transpose(0, 2, 1)[..., None]))
    if softcap is not None:
        t = tanh(s0 / c(softcap))
        ds = f(ds * f(c(1.0) - t * t))
    dq = f(einsum("bhqk,bkhd->bqhd", ds, kh) * c(scale))
    dk = f(einsum("bhqk,bqhd->bkhd", ds, f(q)) * c(scale))
    return {"q": dq, "k": _fold_heads(dk, hkv), "v": _fold_heads(dv, hkv)}


def sdpa_vjp_magnitude(cotangents, q, k, v, segment_ids_q=None, segment_ids_kv=None, *,
                       causal=False, window=None, softcap=None, scale=None):
    """Error scale of a correct backward: the standard (FlashAttention) backward forms
    ``ds = p * (dp - rowsum(dout * out))`` from a rounded ``out``; where the exact ds cancels
    (one visible key) its rounding noise lives at the scale of ``p * (|dp| + |rowsum|)``."""
    dout, dlse = (np.abs(np.asarray(t, np.float64)) for t in cotangents)
    scale = _default_scale(q.shape[-1], scale)
    hkv = k.shape[2]
    s0, _, p, _, kh = _probs(q, k, segment_ids_q, segment_ids_kv, causal, window, softcap, scale)
    vh = np.abs(np.repeat(np.asarray(v, np.float64), q.shape[2] // hkv, axis=2))
    dp = np.einsum("bqhd,bkhd->bhqk", dout, vh)
    row = np.sum(dp * p, axis=-1, keepdims=True)
    ds = p * (dp + row) + p * dlse.transpose(0, 2, 1)[..., None]
    kh, qa = np.abs(kh), np.abs(np.asarray(q, np.float64))
    return {"q": np.einsum("bhqk,bkhd->bqhd", ds, kh) * scale,
            "k": _fold_heads(np.einsum("bhqk,bqhd->bkhd", ds, qa) * scale, hkv),
            "v": _fold_heads(np.einsum("bhqk,bqhd->bkhd", p, dout), hkv)}
