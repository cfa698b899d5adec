"""FlashAttention-2 in Triton (Dao, 2023), after the Triton tutorial ``06-fused-attention``.

Forward: one program per (query block, batch x query head) streams the keys in tiles with an
online softmax (running max and sum, rescaled per tile); no score matrix is materialized; it
writes out, the float32 lse and the row statistics m (max) and log l (log-sum) apart, as
FlashAttention-1 does: the backward recomputes p = exp((s - m) - log l), whose exponent is as
exact as the naive softmax's, where FlashAttention-2's exp(s - lse) loses eps * |lse| (a float32
dq off by 1.4x the bound at |lse| ~ 50 with Tk = 13, D = 1). One
kernel per (key block, batch x KV head) accumulates dk and dv over the query heads of its GQA
group (no atomics), one per (query block, batch x query head) accumulates dq. Both use
``ds = p (dp - delta)`` with ``delta = rowsum(dout * out) - dlse``. Layout (B, T, H, D) read
through strides; masks (causal with the bottom-right offset, window, segments) are computed per
tile, and tiles that no query of the block can see are skipped.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# Tiles on a GPU: tl.dot needs every dimension >= 16; 64 x 64 is the tutorial's choice for
# D <= 128 (not tuned here: no GPU on the development machine).
GPU_BLOCK_M, GPU_BLOCK_N = 64, 64
# Tiles in the interpreter: small and unequal, so that the short sequences the conformance
# suite draws (T <= 15) still span several tiles and the online rescale is exercised.
CPU_BLOCK_M, CPU_BLOCK_N = 8, 4


@triton.jit
def _tanh(x):
    """tanh through expm1 by Kahan's exp/log trick: 1 - 2 / (exp(2x) + 1) loses all relative
    precision near 0 (the interpreter has no libdevice tanh)."""
    y = 2.0 * tl.minimum(tl.abs(x), 15.0)  # tanh(15) == 1 in float32
    u = tl.exp(y)
    em1 = tl.where(u == 1.0, y, (u - 1.0) * y / tl.where(u == 1.0, 1.0, tl.log(u)))
    t = em1 / (em1 + 2.0)
    return tl.where(x < 0, -t, t)


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr):
    """a @ b accumulated in float32. The interpreter multiplies bfloat16 operands as their raw
    integer bits (garbage): there they go up to float32 first, exactly (UPCAST)."""
    if UPCAST:
        a, b = a.to(tl.float32), b.to(tl.float32)
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _scores(q, k, offs_m, offs_n, seg_q, skv_ptr, tq, tk, scale, softcap, window,
            CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SEG: tl.constexpr,
            HAS_SOFTCAP: tl.constexpr, UPCAST: tl.constexpr):
    """Masked scores (BLOCK_M, BLOCK_N), -inf where hidden, and tanh(s0 / softcap) (or s0)."""
    s = _dot(q, tl.trans(k), UPCAST) * scale  # (BLOCK_M, BLOCK_N) float32
    t = s
    if HAS_SOFTCAP:
        t = _tanh(s / softcap)
        s = softcap * t
    pos_q = offs_m[:, None] + (tk - tq)  # queries are the last Tq of Tk positions
    keep = (offs_m[:, None] < tq) & (offs_n[None, :] < tk)
    if CAUSAL:
        keep = keep & (offs_n[None, :] <= pos_q)
    if HAS_WINDOW:
        keep = keep & (offs_n[None, :] > pos_q - window)
    if HAS_SEG:
        seg_k = tl.load(skv_ptr + offs_n, mask=offs_n < tk, other=-1)
        keep = keep & (seg_q[:, None] == seg_k[None, :])
    return tl.where(keep, s, float("-inf")), t


@triton.jit
def _key_range(m0, tq, tk, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Keys [lo, hi) that some query of the block [m0, m0 + BLOCK_M) may see; lo tile-aligned."""
    lo = 0
    hi = tk
    if CAUSAL:
        hi = tl.minimum(tk, tl.minimum(m0 + BLOCK_M, tq) + tk - tq)  # last position + 1
    if HAS_WINDOW:
        lo = tl.maximum(0, m0 + tk - tq - window + 1) // BLOCK_N * BLOCK_N
    return lo, hi


@triton.jit
def _query_range(n0, tq, tk, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Queries [lo, hi) that may see some key of the block [n0, n0 + BLOCK_N); lo tile-aligned."""
    lo = 0
    hi = tq
    if CAUSAL:
        lo = tl.maximum(0, n0 - tk + tq) // BLOCK_M * BLOCK_M  # position >= first key
    if HAS_WINDOW:
        hi = tl.minimum(tq, tl.minimum(n0 + BLOCK_N, tk) + window - 1 - tk + tq)
    return lo, hi


@triton.jit
def _sdpa_fwd_kernel(q_ptr, k_ptr, v_ptr, sq_ptr, skv_ptr, o_ptr, lse_ptr, stat_ptr,
                     sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh,
                     tq, tk, hq, groups, d, dv, scale, softcap, window,
                     CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SEG: tl.constexpr,
                     HAS_SOFTCAP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr):
    m0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // hq, bh % hq
    hk = h // groups  # GQA: query head h reads KV head h // (Hq // Hkv)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d, offs_dv = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :],
                mask=(offs_m[:, None] < tq) & (offs_d[None, :] < d), other=0.0)
    seg_q = offs_m
    if HAS_SEG:
        seg_q = tl.load(sq_ptr + b * tq + offs_m, mask=offs_m < tq, other=-2)
    k_base, v_base = k_ptr + b * skb + hk * skh, v_ptr + b * svb + hk * svh
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max
    l_i = tl.zeros((BLOCK_M,), tl.float32)  # running sum of exp(s - m_i)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    lo, hi = _key_range(m0, tq, tk, window, CAUSAL, HAS_WINDOW, BLOCK_M, BLOCK_N)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = tl.load(k_base + offs_n[:, None] * skt + offs_d[None, :],
                    mask=(offs_n[:, None] < tk) & (offs_d[None, :] < d), other=0.0)
        s, _ = _scores(q, k, offs_m, offs_n, seg_q, skv_ptr + b * tk, tq, tk, scale, softcap,
                       window, CAUSAL, HAS_WINDOW, HAS_SEG, HAS_SOFTCAP, UPCAST)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key seen yet: no NaN
        alpha = tl.exp(m_i - m_safe)  # rescale of what was summed under the old max
        p = tl.exp(s - m_safe[:, None])  # (BLOCK_M, BLOCK_N); hidden keys: 0
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + offs_n[:, None] * svt + offs_dv[None, :],
                    mask=(offs_n[:, None] < tk) & (offs_dv[None, :] < dv), other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST)
        m_i = m_new
    seen = l_i > 0  # a fully masked row: out 0, lse -inf
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(seen, m_i + tl.log(l_safe), float("-inf"))
    tl.store(o_ptr + b * sob + h * soh + offs_m[:, None] * sot + offs_dv[None, :],
             out.to(o_ptr.dtype.element_ty), mask=(offs_m[:, None] < tq) & (offs_dv[None, :] < dv))
    tl.store(lse_ptr + bh * tq + offs_m, lse, mask=offs_m < tq)  # lse (B, Hq, Tq)
    # m (+inf on a fully masked row: p = exp(s - inf) = 0) and log l, for the backward
    stat = stat_ptr + (bh * tq + offs_m) * 2  # (B, Hq, Tq, 2)
    tl.store(stat, tl.where(seen, m_i, float("inf")), mask=offs_m < tq)
    tl.store(stat + 1, tl.log(l_safe), mask=offs_m < tq)


@triton.jit
def _row_stats(stat_ptr, row0, offs_m, rows):
    """m and log l of the rows (BLOCK_M,): p = exp((s - m) - log l)."""
    stat = stat_ptr + (row0 + offs_m) * 2
    return (tl.load(stat, mask=rows, other=float("inf")),
            tl.load(stat + 1, mask=rows, other=0.0))


@triton.jit
def _sdpa_bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, sq_ptr, skv_ptr, do_ptr, stat_ptr, delta_ptr,
                          dk_ptr, dv_ptr, sqb, sqt, sqh, skb, skt, skh, svb, svt, svh,
                          sdob, sdot, sdoh, tq, tk, hq, hkv, groups, d, dv, scale, softcap,
                          window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                          HAS_SEG: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr):
    n0 = tl.program_id(0) * BLOCK_N
    bhk = tl.program_id(1).to(tl.int64)
    b, hk = bhk // hkv, bhk % hkv
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d, offs_dv = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    k = tl.load(k_ptr + b * skb + hk * skh + offs_n[:, None] * skt + offs_d[None, :],
                mask=(offs_n[:, None] < tk) & (offs_d[None, :] < d), other=0.0)
    v = tl.load(v_ptr + b * svb + hk * svh + offs_n[:, None] * svt + offs_dv[None, :],
                mask=(offs_n[:, None] < tk) & (offs_dv[None, :] < dv), other=0.0)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv_acc = tl.zeros((BLOCK_N, BLOCK_DV), tl.float32)
    lo, hi = _query_range(n0, tq, tk, window, CAUSAL, HAS_WINDOW, BLOCK_M, BLOCK_N)
    for g in range(groups):  # the query heads of this KV head's group: dk, dv summed over them
        h = hk * groups + g
        for m0 in range(lo, hi, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            rows = offs_m < tq
            q = tl.load(q_ptr + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :],
                        mask=rows[:, None] & (offs_d[None, :] < d), other=0.0)
            do = tl.load(do_ptr + b * sdob + h * sdoh + offs_m[:, None] * sdot + offs_dv[None, :],
                         mask=rows[:, None] & (offs_dv[None, :] < dv), other=0.0)
            m, logl = _row_stats(stat_ptr, (b * hq + h) * tq, offs_m, rows)
            delta = tl.load(delta_ptr + (b * hq + h) * tq + offs_m, mask=rows, other=0.0)
            seg_q = offs_m
            if HAS_SEG:
                seg_q = tl.load(sq_ptr + b * tq + offs_m, mask=rows, other=-2)
            s, t = _scores(q, k, offs_m, offs_n, seg_q, skv_ptr + b * tk, tq, tk, scale,
                           softcap, window, CAUSAL, HAS_WINDOW, HAS_SEG, HAS_SOFTCAP, UPCAST)
            p = tl.exp((s - m[:, None]) - logl[:, None])  # (BLOCK_M, BLOCK_N)
            dv_acc += _dot(tl.trans(p.to(do.dtype)), do, UPCAST)
            dp = _dot(do, tl.trans(v), UPCAST)
            ds = p * (dp - delta[:, None])
            if HAS_SOFTCAP:
                ds = ds * (1.0 - t * t)
            dk += _dot(tl.trans(ds.to(q.dtype)), q, UPCAST)
    dk = dk * scale
    tl.store(dk_ptr + b * skb + hk * skh + offs_n[:, None] * skt + offs_d[None, :],
             dk.to(dk_ptr.dtype.element_ty), mask=(offs_n[:, None] < tk) & (offs_d[None, :] < d))
    tl.store(dv_ptr + b * svb + hk * svh + offs_n[:, None] * svt + offs_dv[None, :],
             dv_acc.to(dv_ptr.dtype.element_ty),
             mask=(offs_n[:, None] < tk) & (offs_dv[None, :] < dv))


@triton.jit
def _sdpa_bwd_dq_kernel(q_ptr, k_ptr, v_ptr, sq_ptr, skv_ptr, do_ptr, stat_ptr, delta_ptr, dq_ptr,
                        sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdob, sdot, sdoh,
                        tq, tk, hq, groups, d, dv, scale, softcap, window,
                        CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SEG: tl.constexpr,
                        HAS_SOFTCAP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr):
    m0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // hq, bh % hq
    hk = h // groups
    offs_m = m0 + tl.arange(0, BLOCK_M)
    rows = offs_m < tq
    offs_d, offs_dv = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :],
                mask=rows[:, None] & (offs_d[None, :] < d), other=0.0)
    do = tl.load(do_ptr + b * sdob + h * sdoh + offs_m[:, None] * sdot + offs_dv[None, :],
                 mask=rows[:, None] & (offs_dv[None, :] < dv), other=0.0)
    m, logl = _row_stats(stat_ptr, bh * tq, offs_m, rows)
    delta = tl.load(delta_ptr + bh * tq + offs_m, mask=rows, other=0.0)
    seg_q = offs_m
    if HAS_SEG:
        seg_q = tl.load(sq_ptr + b * tq + offs_m, mask=rows, other=-2)
    k_base, v_base = k_ptr + b * skb + hk * skh, v_ptr + b * svb + hk * svh
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    lo, hi = _key_range(m0, tq, tk, window, CAUSAL, HAS_WINDOW, BLOCK_M, BLOCK_N)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = tl.load(k_base + offs_n[:, None] * skt + offs_d[None, :],
                    mask=(offs_n[:, None] < tk) & (offs_d[None, :] < d), other=0.0)
        v = tl.load(v_base + offs_n[:, None] * svt + offs_dv[None, :],
                    mask=(offs_n[:, None] < tk) & (offs_dv[None, :] < dv), other=0.0)
        s, t = _scores(q, k, offs_m, offs_n, seg_q, skv_ptr + b * tk, tq, tk, scale, softcap,
                       window, CAUSAL, HAS_WINDOW, HAS_SEG, HAS_SOFTCAP, UPCAST)
        p = tl.exp((s - m[:, None]) - logl[:, None])
        dp = _dot(do, tl.trans(v), UPCAST)
        ds = p * (dp - delta[:, None])
        if HAS_SOFTCAP:
            ds = ds * (1.0 - t * t)
        dq += _dot(ds.to(k.dtype), k, UPCAST)
    dq = dq * scale
    tl.store(dq_ptr + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :],
             dq.to(dq_ptr.dtype.element_ty), mask=rows[:, None] & (offs_d[None, :] < d))


class _Config:
    """Static parameters and tile sizes of one call, as the kernels' keyword arguments."""

    def __init__(self, q, k, v, seg_q, causal, window, softcap, scale, block_m, block_n):
        gpu = q.is_cuda
        self.block_m = block_m or (GPU_BLOCK_M if gpu else CPU_BLOCK_M)
        self.block_n = block_n or (GPU_BLOCK_N if gpu else CPU_BLOCK_N)
        low = 16 if gpu else 1  # tl.dot's smallest dimension on a GPU
        self.scalars = dict(scale=scale, softcap=1.0 if softcap is None else softcap,
                            window=0 if window is None else window)
        self.flags = dict(CAUSAL=causal, HAS_WINDOW=window is not None,
                          HAS_SEG=seg_q is not None, HAS_SOFTCAP=softcap is not None,
                          BLOCK_M=self.block_m, BLOCK_N=self.block_n, UPCAST=not gpu,
                          BLOCK_D=max(low, triton.next_power_of_2(q.shape[3])),
                          BLOCK_DV=max(low, triton.next_power_of_2(v.shape[3])))


def _strides(*tensors):
    """(b, t, h) strides of (B, T, H, D) tensors whose last dim is contiguous."""
    return [s for t in tensors for s in t.stride()[:3]]


def _segments(seg_q, seg_kv, q):
    if seg_q is None:
        return q, q  # never read: HAS_SEG is off
    return seg_q.contiguous(), seg_kv.contiguous()


def sdpa_forward(q, k, v, seg_q, seg_kv, cfg: _Config):
    """q (B, Tq, Hq, D), k (B, Tk, Hkv, D), v (B, Tk, Hkv, Dv) contiguous -> out (B, Tq, Hq, Dv)
    in q's dtype, lse (B, Hq, Tq) float32, row statistics (B, Hq, Tq, 2) float32."""
    b, tq, hq, d = q.shape
    tk, hkv, dv = k.shape[1], k.shape[2], v.shape[3]
    out = torch.zeros((b, tq, hq, dv), dtype=q.dtype, device=q.device)
    lse = torch.full((b, hq, tq), -math.inf, dtype=torch.float32, device=q.device)
    stats = torch.empty((b, hq, tq, 2), dtype=torch.float32, device=q.device)
    if b * tq * hq and tk:
        sq, skv = _segments(seg_q, seg_kv, q)
        grid = (triton.cdiv(tq, cfg.block_m), b * hq)
        _sdpa_fwd_kernel[grid](q, k, v, sq, skv, out, lse, stats, *_strides(q, k, v, out), tq,
                               tk, hq, hq // hkv, d, dv, **cfg.scalars, **cfg.flags)
    return out, lse, stats


def sdpa_backward(dout, dlse, q, k, v, seg_q, seg_kv, out, stats, cfg: _Config):
    """dq, dk, dv in the inputs' dtypes; dlse (B, Tq, Hq) or None."""
    b, tq, hq, d = q.shape
    tk, hkv, dv = k.shape[1], k.shape[2], v.shape[3]
    dq, dk, dvv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    if not (b * tq * hq and tk):
        return dq, dk, dvv
    dout = dout.contiguous()
    # delta = rowsum(dout * out) - dlse (B, Hq, Tq): ds = p (dp - rowsum(p dp)) + p dlse
    delta = (dout.float() * out.float()).sum(-1)
    if dlse is not None:
        delta = delta - dlse.float()
    delta = delta.permute(0, 2, 1).contiguous()
    sq, skv = _segments(seg_q, seg_kv, q)
    common = (*_strides(q, k, v, dout), tq, tk, hq)
    _sdpa_bwd_dkdv_kernel[(triton.cdiv(tk, cfg.block_n), b * hkv)](
        q, k, v, sq, skv, dout, stats, delta, dk, dvv, *common, hkv, hq // hkv, d, dv,
        **cfg.scalars, **cfg.flags)
    _sdpa_bwd_dq_kernel[(triton.cdiv(tq, cfg.block_m), b * hq)](
        q, k, v, sq, skv, dout, stats, delta, dq, *common, hq // hkv, d, dv, **cfg.scalars,
        **cfg.flags)
    return dq, dk, dvv


class SdpaFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, seg_q, seg_kv, cfg: _Config):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, lse, stats = sdpa_forward(q, k, v, seg_q, seg_kv, cfg)
        ctx.save_for_backward(q, k, v, seg_q, seg_kv, out, stats)
        ctx.cfg = cfg
        return out, lse.permute(0, 2, 1)  # lse (B, Tq, Hq)

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, seg_q, seg_kv, out, stats = ctx.saved_tensors
        dq, dk, dv = sdpa_backward(dout, dlse, q, k, v, seg_q, seg_kv, out, stats, ctx.cfg)
        return dq, dk, dv, None, None, None


def sdpa(q, k, v, segment_ids_q=None, segment_ids_kv=None, *, causal: bool = False,
         window: int | None = None, softcap: float | None = None, scale: float | None = None,
         block_m: int | None = None, block_n: int | None = None):
    """FlashAttention with the Triton kernels (arguments already checked); ``block_m`` and
    ``block_n`` override the tiles (on a GPU they must be >= 16)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    cfg = _Config(q, k, v, segment_ids_q, causal, window, softcap, scale, block_m, block_n)
    return SdpaFunction.apply(q, k, v, segment_ids_q, segment_ids_kv, cfg)
