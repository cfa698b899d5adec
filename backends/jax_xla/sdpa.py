"""Scaled dot-product attention (Vaswani et al., 2017) in jitted JAX, with the masks of decoders.

GQA by reshaping queries to (B, Tq, Hkv, G, D) (query head h reads KV head h // G, as HF's
repeat_kv), bottom-right causal alignment, sliding window, segment ids, softcap, float32
scores and lse. Causal attention runs in query blocks that read only the keys they can see
(block-sparse, as FlashAttention skips masked tiles). The backward is FlashAttention's (Dao,
2022), recomputing probabilities: ``ds = p (dp - rowsum(dp p)) + p dlse``. A fully masked row
has p = 0 throughout: out 0, lse -inf and an exactly zero gradient, with no NaN anywhere.
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lmspec.backends.jax_xla._common import centred, einsum, f32
from lmspec.spec.sdpa import check_args

# Query rows per causal block. At (B, T, H, D) = (1, 1024, 8, 64) fp32 on 2 CPU cores:
# one block 80 ms, 512 -> 63 ms, 256 -> 55 ms, 128 -> 56 ms (more blocks, more overhead).
BLOCK = 256


class Block(NamedTuple):
    """Query rows [q0, q1) and the key range [k0, k1) that any of them can see."""

    q0: int
    q1: int
    k0: int
    k1: int


def _blocks(tq: int, tk: int, causal: bool, window: int | None) -> list[Block]:
    if not causal or tq <= BLOCK:
        return [Block(0, tq, 0, tk)]
    blocks = []
    for q0 in range(0, tq, BLOCK):
        q1 = min(tq, q0 + BLOCK)
        k1 = min(tk, max(0, q1 + tk - tq))  # the last query sits at q1 - 1 + Tk - Tq
        k0 = 0 if window is None else min(k1, max(0, q0 + tk - tq - window + 1))
        blocks.append(Block(q0, q1, k0, k1))
    return blocks


def _visible(blk: Block, tq: int, tk: int, seg_q, seg_kv, causal: bool, window: int | None):
    """Boolean mask broadcastable to (B, Hkv, G, Tq_blk, Tk_blk), or None: all visible."""
    shape = (blk.q1 - blk.q0, blk.k1 - blk.k0)
    mask = None
    if causal:
        pos_q = lax.broadcasted_iota(jnp.int32, shape, 0) + (blk.q0 + tk - tq)  # i + Tk - Tq
        pos_k = lax.broadcasted_iota(jnp.int32, shape, 1) + blk.k0
        mask = pos_k <= pos_q
        if window is not None:
            mask = mask & (pos_k > pos_q - window)
        mask = mask[None, None, None]  # (1, 1, 1, Tq_blk, Tk_blk)
    if seg_q is not None:
        sq, skv = seg_q[:, blk.q0:blk.q1], seg_kv[:, blk.k0:blk.k1]
        same = (sq[:, :, None] == skv[:, None, :])[:, None, None]  # (B, 1, 1, Tq_blk, Tk_blk)
        mask = same if mask is None else mask & same
    return mask


class Scores(NamedTuple):
    u: jax.Array | None  # s0 / softcap, for the softcap derivative
    e: jax.Array  # exp(s - m), 0 where masked  (B, Hkv, G, Tq_blk, Tk_blk)
    total: jax.Array  # sum of e, 1 on fully masked rows  (..., Tq_blk, 1)
    lse: jax.Array  # -inf on fully masked rows  (..., Tq_blk, 1)


def _scores(qg, k, mask, softcap, scale) -> Scores:
    s = einsum("bqhgd,bkhd->bhgqk", qg, k) * scale  # float32
    u = None
    if softcap is not None:
        u = s / softcap
        s = softcap * jnp.tanh(u)
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf)
    m = s.max(axis=-1, keepdims=True, initial=-jnp.inf)
    m = jnp.where(jnp.isfinite(m), m, 0.0)  # fully masked row: any finite shift will do
    e = jnp.exp(s - m)  # masked entries: exp(-inf) = 0
    total = e.sum(axis=-1, keepdims=True)
    seen = total > 0
    safe = jnp.where(seen, total, 1.0)
    return Scores(u, e, safe, jnp.where(seen, m + jnp.log(safe), -jnp.inf))


def _sech2(u):
    """1 - tanh(u)**2 as 4a / (1 + a)**2, a = exp(-2|u|): no cancellation where tanh saturates
    (XLA's float32 tanh returns exactly +-1 from |u| ~ 9, where 1 - t*t would give 0)."""
    a = jnp.exp(-2.0 * jnp.abs(u))
    return 4.0 * a / ((1.0 + a) * (1.0 + a))


def _heads_last(a, hq: int):
    """(B, Hkv, G, T, X) -> (B, T, Hq, X): query head h = kv_head * G + g."""
    b, _, _, t, x = a.shape
    return a.transpose(0, 3, 1, 2, 4).reshape(b, t, hq, x)


def _grouped(a, hkv: int):
    """(B, T, Hq, X) -> (B, T, Hkv, G, X)."""
    b, t, hq, x = a.shape
    return a.reshape(b, t, hkv, hq // hkv, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _attend(q, k, v, seg_q, seg_kv, causal, window, softcap, scale):
    tq, hq, tk, hkv = q.shape[1], q.shape[2], k.shape[1], k.shape[2]
    qg = _grouped(q, hkv)
    outs, lses = [], []
    for blk in _blocks(tq, tk, causal, window):
        mask = _visible(blk, tq, tk, seg_q, seg_kv, causal, window)
        sc = _scores(qg[:, blk.q0:blk.q1], k[:, blk.k0:blk.k1], mask, softcap, scale)
        # normalise after the PV product: Tq * Dv divisions instead of Tq * Tk
        o = einsum("bhgqk,bkhd->bhgqd", sc.e, v[:, blk.k0:blk.k1]) / sc.total
        outs.append(_heads_last(o, hq))
        lses.append(_heads_last(sc.lse, hq)[..., 0])
    return jnp.concatenate(outs, axis=1).astype(q.dtype), jnp.concatenate(lses, axis=1)


def _attend_fwd(q, k, v, seg_q, seg_kv, causal, window, softcap, scale):
    out = _attend(q, k, v, seg_q, seg_kv, causal, window, softcap, scale)
    return out, (q, k, v, seg_q, seg_kv)


def _attend_bwd(causal, window, softcap, scale, res, cts):
    q, k, v, seg_q, seg_kv = res
    tq, tk, hkv = q.shape[1], k.shape[1], k.shape[2]
    qg = _grouped(q, hkv)
    do = _grouped(f32(cts[0]), hkv)  # (B, Tq, Hkv, G, Dv)
    dl = _grouped(f32(cts[1])[..., None], hkv)  # (B, Tq, Hkv, G, 1)
    dq, dk, dv = [], jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
    for blk in _blocks(tq, tk, causal, window):
        rows, keys = slice(blk.q0, blk.q1), slice(blk.k0, blk.k1)
        mask = _visible(blk, tq, tk, seg_q, seg_kv, causal, window)
        sc = _scores(qg[:, rows], k[:, keys], mask, softcap, scale)
        p = sc.e / sc.total  # (B, Hkv, G, Tq_blk, Tk_blk); 0 where masked
        dp = einsum("bqhgd,bkhd->bhgqk", do[:, rows], v[:, keys])
        # p = 0 on masked entries and fully masked rows: their dlse and dp drop out exactly
        ds = p * centred(dp, p)  # p (dp - rowsum(dp p)), accurate at a one-hot p
        ds = ds + p * dl[:, rows].transpose(0, 2, 3, 1, 4)
        if sc.u is not None:
            ds = ds * _sech2(sc.u)
        dq.append(einsum("bhgqk,bkhd->bqhgd", ds, k[:, keys]) * scale)
        # summed over each KV head's group of query heads
        dk = dk.at[:, keys].add(einsum("bhgqk,bqhgd->bkhd", ds, qg[:, rows]) * scale)
        dv = dv.at[:, keys].add(einsum("bhgqk,bqhgd->bkhd", p, do[:, rows]))
    dq = jnp.concatenate(dq, axis=1).reshape(q.shape)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


_attend.defvjp(_attend_fwd, _attend_bwd)


@functools.partial(jax.jit, static_argnames=("causal", "window", "softcap", "scale"))
def _sdpa(q, k, v, seg_q, seg_kv, *, causal: bool, window: int | None, softcap: float | None,
          scale: float):
    return _attend(q, k, v, seg_q, seg_kv, causal, window, softcap, scale)


def _pallas_mode() -> str | None:
    """Where the forward runs the Pallas kernel (kernels/sdpa.py): 'compiled' on a GPU,
    'interpret' anywhere with LMSPEC_PALLAS_INTERPRET=1 (tests), else None: XLA. TPU keeps XLA:
    the kernel's blocks are shaped for Triton, not for Mosaic's layout rules (untested there)."""
    if os.environ.get("LMSPEC_PALLAS_INTERPRET") == "1":
        return "interpret"
    return "compiled" if jax.default_backend() == "gpu" else None


def sdpa(q, k, v, segment_ids_q=None, segment_ids_kv=None, *, causal: bool = False,
         window: int | None = None, softcap: float | None = None, scale: float | None = None):
    check_args(q, k, v, segment_ids_q, segment_ids_kv, causal=causal, window=window,
               softcap=softcap, scale=scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    static = dict(causal=bool(causal), window=None if window is None else int(window),
                  softcap=None if softcap is None else float(softcap), scale=scale)
    mode = _pallas_mode()
    if mode is not None:  # the Pallas forward; the backward is _attend_bwd either way
        from lmspec.backends.jax_xla.kernels.sdpa import sdpa as flash  # it imports this module
        return flash(q, k, v, segment_ids_q, segment_ids_kv, **static,
                     interpret=mode == "interpret")
    return _sdpa(q, k, v, segment_ids_q, segment_ids_kv, **static)
