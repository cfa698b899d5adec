"""FlashAttention-2 forward in Pallas (Dao, 2023), after jax.experimental.pallas.ops.gpu.attention.

One program per (batch, query head, query block) streams the keys in blocks through a
``fori_loop`` with an online softmax (running max and sum, rescaled per block), accumulating in
float32; no score matrix is materialized. GQA lives in the K/V index map: query head h reads KV
head h // G. Masks (bottom-right causal offset, window, segment ids, padding) are computed per
block, and the loop bounds skip key blocks that no query of the block can see. The wrapper pads
the sequences to whole blocks and the head dims to a power of two (Triton's blocks must be
powers of two) with zeros: padded keys are masked, padded queries and channels sliced off.

Forward only: the backward is the XLA one of ``lmspec.backends.jax_xla.sdpa`` (a custom_vjp),
which recomputes the probabilities from q, k and v and needs nothing from this forward.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from lmspec.backends.jax_xla.sdpa import _attend_bwd

# Blocks on a GPU (Triton lowering): dots need every dimension >= 16; 64 x 64 is the Triton
# kernel's choice for D <= 128 (not tuned: no GPU on the development machine).
GPU_BLOCK_Q, GPU_BLOCK_K = 64, 64
# Blocks in interpret mode: small and unequal, so that the short sequences of the conformance
# suite (T <= 15) span several blocks and the online rescale is exercised.
CPU_BLOCK_Q, CPU_BLOCK_K = 8, 4
_F32 = jnp.float32
_QK = (((1,), (1,)), ((), ()))  # (BQ, D) x (BK, D) -> (BQ, BK): q k^T
_PV = (((1,), (0,)), ((), ()))  # (BQ, BK) x (BK, Dv) -> (BQ, Dv)


def _visible(q0, n0, tq: int, tk: int, causal: bool, window: int | None, seg_q, seg_k,
             block_q: int, block_k: int):
    """(BQ, BK) bool: key n0 + c visible to query q0 + r (padded keys never are)."""
    rows = q0 + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 0)
    cols = n0 + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)
    keep = cols < tk
    pos = rows + (tk - tq)  # queries are the last Tq of Tk positions
    if causal:
        keep = keep & (cols <= pos)
    if window is not None:
        keep = keep & (cols > pos - window)
    if seg_q is not None:
        keep = keep & (seg_q[:, None] == seg_k[None, :])
    return keep


def _key_blocks(q0, tq: int, tk: int, causal: bool, window: int | None, block_q: int,
                block_k: int, n_blocks: int):
    """Key blocks [lo, hi) that some query of the block [q0, q0 + BQ) may see."""
    lo, hi = 0, n_blocks
    if causal:  # the block's last query sits at min(q0 + BQ, Tq) - 1 + Tk - Tq
        last = jnp.clip(jnp.minimum(q0 + block_q, tq) + (tk - tq), 0, tk)
        hi = lax.div(last + (block_k - 1), block_k)
    if window is not None:  # its first query sees keys from q0 + Tk - Tq - W + 1 on
        lo = lax.div(jnp.maximum(0, q0 + (tk - tq) - window + 1), block_k)
    return lo, hi


def _sdpa_fwd_kernel(*refs, tq: int, tk: int, causal: bool, window: int | None,
                     softcap: float | None, scale: float, block_q: int, block_k: int,
                     has_seg: bool):
    if has_seg:
        q_ref, k_ref, v_ref, sq_ref, skv_ref, o_ref, lse_ref = refs
    else:
        (q_ref, k_ref, v_ref, o_ref, lse_ref), sq_ref, skv_ref = refs, None, None
    q0 = pl.program_id(2) * block_q
    q = q_ref[...]  # (BQ, Dp)
    seg_q = None if sq_ref is None else sq_ref[...]  # (BQ,)

    def body(j, carry):
        acc, m_i, l_i = carry  # (BQ, Dvp), (BQ,), (BQ,)
        n0 = pl.multiple_of(j * block_k, block_k)
        k = k_ref[pl.ds(n0, block_k), :]  # (BK, Dp)
        s = lax.dot_general(q, k, _QK, preferred_element_type=_F32) * scale
        if softcap is not None:
            s = softcap * jnp.tanh(s / softcap)
        seg_k = None if skv_ref is None else skv_ref[pl.ds(n0, block_k)]
        keep = _visible(q0, n0, tq, tk, causal, window, seg_q, seg_k, block_q, block_k)
        s = jnp.where(keep, s, -jnp.inf)
        m_new = jnp.maximum(m_i, s.max(axis=1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # no key seen yet: no NaN
        alpha = jnp.exp(m_i - m_safe)  # rescale of what was summed under the old max
        p = jnp.exp(s - m_safe[:, None])  # (BQ, BK); hidden keys: 0
        v = v_ref[pl.ds(n0, block_k), :]  # (BK, Dvp)
        pv = lax.dot_general(p.astype(v.dtype), v, _PV, preferred_element_type=_F32)
        return acc * alpha[:, None] + pv, m_new, l_i * alpha + p.sum(axis=1)

    init = (jnp.zeros(o_ref.shape, _F32), jnp.full((block_q,), -jnp.inf, _F32),
            jnp.zeros((block_q,), _F32))
    lo, hi = _key_blocks(q0, tq, tk, causal, window, block_q, block_k,
                         k_ref.shape[0] // block_k)
    acc, m_i, l_i = lax.fori_loop(lo, hi, body, init)
    seen = l_i > 0  # a fully masked row: out 0, lse -inf
    l_safe = jnp.where(seen, l_i, 1.0)
    o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, m_i + jnp.log(l_safe), -jnp.inf)


def _pad(a, axis: int, size: int, value=0):
    if a.shape[axis] == size:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, size - a.shape[axis])
    return jnp.pad(a, widths, constant_values=value)


def _blocks(tq: int, tk: int, block_q: int | None, block_k: int | None, interpret: bool):
    if interpret:
        return block_q or CPU_BLOCK_Q, block_k or CPU_BLOCK_K
    fit = lambda t, most: min(most, max(16, pl.next_power_of_2(t)))  # noqa: E731 - decode: Tq 1
    return block_q or fit(tq, GPU_BLOCK_Q), block_k or fit(tk, GPU_BLOCK_K)


def sdpa_forward(q, k, v, seg_q, seg_kv, *, causal: bool, window: int | None,
                 softcap: float | None, scale: float, block_q: int | None = None,
                 block_k: int | None = None, interpret: bool = False):
    """q (B, Tq, Hq, D), k (B, Tk, Hkv, D), v (B, Tk, Hkv, Dv) -> out (B, Tq, Hq, Dv) in q's
    dtype and lse (B, Tq, Hq) float32, through one pallas_call over (B, Hq, query blocks)."""
    b, tq, hq, d = q.shape
    tk, hkv, dv = k.shape[1], k.shape[2], v.shape[3]
    if not (b * tq * hq and tk):
        return (jnp.zeros((b, tq, hq, dv), q.dtype), jnp.full((b, tq, hq), -jnp.inf, _F32))
    bq, bk = _blocks(tq, tk, block_q, block_k, interpret)
    low = 1 if interpret else 16  # Triton's dots need >= 16
    tqp, tkp = pl.cdiv(tq, bq) * bq, pl.cdiv(tk, bk) * bk
    dp, dvp = max(low, pl.next_power_of_2(d)), max(low, pl.next_power_of_2(dv))
    qp = _pad(_pad(q, 1, tqp), 3, dp)  # (B, Tqp, Hq, Dp)
    kp = _pad(_pad(k, 1, tkp), 3, dp)  # (B, Tkp, Hkv, Dp)
    vp = _pad(_pad(v, 1, tkp), 3, dvp)  # (B, Tkp, Hkv, Dvp)
    groups = hq // hkv

    def kv_head(b_, h, i):  # GQA: query head h reads KV head h // G
        return b_, 0, lax.div(h, groups), 0

    in_specs = [pl.BlockSpec((None, bq, None, dp), lambda b_, h, i: (b_, i, h, 0)),
                pl.BlockSpec((None, tkp, None, dp), kv_head),
                pl.BlockSpec((None, tkp, None, dvp), kv_head)]
    args = [qp, kp, vp]
    if seg_q is not None:  # padded ids: -1 for queries, -2 for keys (padded keys are masked)
        in_specs += [pl.BlockSpec((None, bq), lambda b_, h, i: (b_, i)),
                     pl.BlockSpec((None, tkp), lambda b_, h, i: (b_, 0))]
        args += [_pad(seg_q.astype(jnp.int32), 1, tqp, -1),
                 _pad(seg_kv.astype(jnp.int32), 1, tkp, -2)]
    kernel = functools.partial(_sdpa_fwd_kernel, tq=tq, tk=tk, causal=causal, window=window,
                               softcap=softcap, scale=scale, block_q=bq, block_k=bk,
                               has_seg=seg_q is not None)
    out, lse = pl.pallas_call(
        kernel, grid=(b, hq, tqp // bq), in_specs=in_specs,
        out_specs=[pl.BlockSpec((None, bq, None, dvp), lambda b_, h, i: (b_, i, h, 0)),
                   pl.BlockSpec((None, None, bq), lambda b_, h, i: (b_, h, i))],
        out_shape=[jax.ShapeDtypeStruct((b, tqp, hq, dvp), q.dtype),
                   jax.ShapeDtypeStruct((b, hq, tqp), _F32)],
        # Triton's parameters also pick the Triton lowering: this jax's GPU default is Mosaic GPU
        compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret, name="lmspec_sdpa_fwd")(*args)
    return out[:, :tq, :, :dv], lse[:, :, :tq].transpose(0, 2, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9, 10, 11))
def _flash(q, k, v, seg_q, seg_kv, causal, window, softcap, scale, block_q, block_k, interpret):
    return sdpa_forward(q, k, v, seg_q, seg_kv, causal=causal, window=window, softcap=softcap,
                        scale=scale, block_q=block_q, block_k=block_k, interpret=interpret)


def _flash_fwd(q, k, v, seg_q, seg_kv, causal, window, softcap, scale, block_q, block_k,
               interpret):
    out = _flash(q, k, v, seg_q, seg_kv, causal, window, softcap, scale, block_q, block_k,
                 interpret)
    return out, (q, k, v, seg_q, seg_kv)


def _flash_bwd(causal, window, softcap, scale, block_q, block_k, interpret, res, cts):
    return _attend_bwd(causal, window, softcap, scale, res, cts)  # XLA's FlashAttention backward


_flash.defvjp(_flash_fwd, _flash_bwd)


@functools.partial(jax.jit, static_argnames=("causal", "window", "softcap", "scale", "block_q",
                                             "block_k", "interpret"))
def sdpa(q, k, v, segment_ids_q=None, segment_ids_kv=None, *, causal: bool = False,
         window: int | None = None, softcap: float | None = None, scale: float | None = None,
         block_q: int | None = None, block_k: int | None = None, interpret: bool = False):
    """FlashAttention with the Pallas forward (arguments already checked); ``block_q`` and
    ``block_k`` override the blocks (on a GPU, powers of two >= 16); ``interpret`` runs the
    kernel in Pallas interpret mode (any platform, CPU included)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _flash(q, k, v, segment_ids_q, segment_ids_kv, causal, window, softcap, scale,
                  block_q, block_k, interpret)
