"""Scaled dot-product attention (Vaswani et al., 2017): torch's CPU flash kernel, else masked math.

CUDA tensors in float32/bfloat16/float16 take the Triton FlashAttention-2 kernels
(``kernels/sdpa.py``); the rest of this docstring is about the torch path.

The flash path (``_scaled_dot_product_flash_attention_for_cpu``, which returns the lse) runs
when nothing but plain or square-causal attention is asked for: its causal mask is top-left
aligned, so it equals the spec's bottom-right one only when Tq == Tk, and it needs D == Dv.
Everything else (offset causal, window, segments, softcap, Tq > Tk) takes explicit float32
math. The backward is always explicit, by blocks of queries, in the reference's form
``ds = p (dp - rowsum(p dp)) + p dlse``: the flash backward's ``rowsum(dout * out)`` (and
autograd's sum of the out and lse paths) cancel to rounding noise of order |dout| |v| where
the exact gradient is 0 (one visible key), which the naive baseline gets exactly.

Known gap: in float32 the CPU flash kernel's exp is approximate (lse off by ~13 ulp here), so
``out`` can exceed the 2 x naive bound (ratio 1.29 measured on q (1, 3, 2, 16), k (1, 13, 2,
16)); the explicit path would pass but runs ~0.1x of F.scaled_dot_product_attention.
"""

from __future__ import annotations

import math

import torch

from lmspec.backends.torch_triton._dispatch import kernel_dtype, on_cuda
from lmspec.spec.sdpa import check_args

_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def sdpa(q, k, v, segment_ids_q=None, segment_ids_kv=None, *, causal: bool = False,
         window: int | None = None, softcap: float | None = None, scale: float | None = None):
    return forward(q, k, v, segment_ids_q, segment_ids_kv, causal, window, softcap, scale,
                   kernel=on_cuda(q, k, v, segment_ids_q, segment_ids_kv))


def forward(q, k, v, segment_ids_q, segment_ids_kv, causal: bool, window: int | None,
            softcap: float | None, scale: float | None, *, kernel: bool):
    """Checks the arguments, then runs the Triton flash kernels (``kernel``) or the torch path."""
    check_args(q, k, v, segment_ids_q, segment_ids_kv, causal=causal, window=window,
               softcap=softcap, scale=scale)
    if kernel and kernel_dtype(q):
        from lmspec.backends.torch_triton.kernels.sdpa import sdpa as sdpa_triton

        return sdpa_triton(q, k, v, segment_ids_q, segment_ids_kv, causal=causal, window=window,
                           softcap=softcap, scale=scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    b, tq, hq, _ = q.shape
    tk, dv = k.shape[1], v.shape[3]
    if tq == 0 or tk == 0:
        # no query, or no key to see: out 0, lse -inf (B, Tq, Hq), zero gradient
        lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        out = q.new_zeros((b, tq, hq, dv))
        return out, torch.full((b, tq, hq), -math.inf, dtype=lse_dtype, device=q.device)
    masks = _Masks(tq, tk, segment_ids_q, segment_ids_kv, causal, window)
    return _Attention.apply(q, k, v, masks, softcap, scale)


class _Masks:
    """Visibility of keys to a block of queries; query i sits at position i + Tk - Tq."""

    def __init__(self, tq: int, tk: int, seg_q, seg_kv, causal: bool, window: int | None):
        self.tq, self.tk, self.seg_q, self.seg_kv = tq, tk, seg_q, seg_kv
        self.causal, self.window = causal, window

    @property
    def flash_ok(self) -> bool:
        """torch's flash mask is top-left causal: the spec's only when Tq == Tk."""
        plain = self.seg_q is None and self.window is None
        return plain and (not self.causal or self.tq == self.tk)

    def rows(self, i0: int, i1: int, device) -> torch.Tensor | None:
        """Boolean (B or 1, 1, 1, i1 - i0, Tk) for queries i0..i1, or None (all visible)."""
        pos_q = torch.arange(i0, i1, device=device)[:, None] + (self.tk - self.tq)  # (c, 1)
        pos_k = torch.arange(self.tk, device=device)[None, :]  # (1, Tk)
        mask = None
        if self.causal:
            mask = pos_k <= pos_q
            if self.window is not None:
                mask = mask & (pos_k > pos_q - self.window)
        if self.seg_q is not None:
            same = self.seg_q[:, i0:i1, None] == self.seg_kv[:, None, :]  # (B, c, Tk)
            mask = same if mask is None else mask & same
        return None if mask is None else mask.reshape(-1, 1, 1, i1 - i0, self.tk)


# Queries per block: bounds the (B, H, BLOCK_Q, Tk) float32 scores to ~32 MB at B*H = 8,
# Tk = 2048.
BLOCK_Q = 512


def _grouped(q, k, v):
    """(B, T, H, D) -> q (B, Hkv, G, Tq, D), k (B, Hkv, 1, Tk, D), v (B, Hkv, 1, Tk, Dv)."""
    b, tq, hq, d = q.shape
    hkv = k.shape[2]
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    qg = q.to(compute).permute(0, 2, 1, 3).reshape(b, hkv, hq // hkv, tq, d)
    return qg, k.to(compute).permute(0, 2, 1, 3)[:, :, None], v.to(compute).permute(0, 2, 1, 3)[
        :, :, None]


def _probs(qg, kg, mask, softcap: float | None, scale: float):
    """Pre-cap scores s0, probabilities p (B, Hkv, G, c, Tk) and lse (B, Hkv, G, c)."""
    s0 = (qg @ kg.transpose(-1, -2)) * scale
    s = s0 if softcap is None else softcap * torch.tanh(s0 / softcap)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, 0.0)  # fully masked row: any finite shift
    e = torch.exp(s - m)  # masked keys: exp(-inf) = 0
    total = e.sum(dim=-1, keepdim=True)
    seen = total > 0
    safe = torch.where(seen, total, 1.0)  # a fully masked row: p = 0, never 0 / 0
    lse = torch.where(seen, m + torch.log(safe), -math.inf)[..., 0]
    return s0, e / safe, lse


def _math_forward(q, k, v, masks: _Masks, softcap: float | None, scale: float):
    """Explicit attention by query blocks: out (B, Tq, Hq, Dv) in q's dtype, lse (B, Tq, Hq)."""
    b, tq, hq, _ = q.shape
    qg, kg, vg = _grouped(q, k, v)
    outs, lses = [], []
    for i0 in range(0, tq, BLOCK_Q):
        i1 = min(i0 + BLOCK_Q, tq)
        _, p, lse = _probs(qg[..., i0:i1, :], kg, masks.rows(i0, i1, q.device), softcap, scale)
        outs.append(p @ vg)  # (B, Hkv, G, c, Dv)
        lses.append(lse)
    out = torch.cat(outs, dim=-2).reshape(b, hq, tq, -1).permute(0, 2, 1, 3).to(q.dtype)
    return out, torch.cat(lses, dim=-1).reshape(b, hq, tq).permute(0, 2, 1)


def _flash_forward(q, k, v, causal: bool, scale: float):
    """torch's CPU flash kernel: out (B, Tq, Hq, D), lse (B, Tq, Hq), and what its backward
    needs (the kernel's own layout: (B, H, T, D)). GQA natively: query head h reads KV head
    h // (Hq / Hkv), as F.scaled_dot_product_attention(enable_gqa=True); no repeated KV."""
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
    out, lse = _FLASH(qt, kt, vt, 0.0, causal, scale=scale)  # (B, Hq, Tq, D), (B, Hq, Tq)
    return out.transpose(1, 2), lse.transpose(1, 2), (out, lse)


def _flash_backward(q, k, v, dout, saved, causal: bool, scale: float):
    """The fused backward of ``_flash_forward`` (no lse gradient); a KV head's gradient sums
    over the query heads of its group, inside the kernel."""
    out, lse = saved
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    dq, dk, dv = _FLASH_BACKWARD(dout.transpose(1, 2).contiguous(), qt, kt, vt, out, lse, 0.0,
                                 causal, scale=scale)
    return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)


def _backward(q, k, v, dout, dlse, masks: _Masks, softcap: float | None, scale: float):
    """dq, dk, dv by blocks of queries: ds = p (dp - rowsum(p dp)) + p dlse (then the cap)."""
    b, tq, hq, d = q.shape
    qg, kg, vg = _grouped(q, k, v)
    dog = dout.to(qg.dtype).permute(0, 2, 1, 3).reshape(b, *qg.shape[1:3], tq, -1)
    dlg = None if dlse is None else dlse.to(qg.dtype).permute(0, 2, 1).reshape(qg.shape[:-1])
    dq, dk, dv = torch.empty_like(qg), torch.zeros_like(kg), torch.zeros_like(vg)
    for i0 in range(0, tq, BLOCK_Q):
        i1 = min(i0 + BLOCK_Q, tq)
        qc, doc = qg[..., i0:i1, :], dog[..., i0:i1, :]
        s0, p, _ = _probs(qc, kg, masks.rows(i0, i1, q.device), softcap, scale)
        dp = doc @ vg.transpose(-1, -2)  # (B, Hkv, G, c, Tk)
        ds = p * (dp - (p * dp).sum(dim=-1, keepdim=True))
        if dlg is not None:
            ds = ds + p * torch.nan_to_num(dlg[..., i0:i1, None], posinf=0.0, neginf=0.0)
        if softcap is not None:
            ds = ds * (1.0 - torch.tanh(s0 / softcap) ** 2)
        dq[..., i0:i1, :] = (ds @ kg) * scale
        dk += ((ds.transpose(-1, -2) @ qc) * scale).sum(dim=2, keepdim=True)
        dv += (p.transpose(-1, -2) @ doc).sum(dim=2, keepdim=True)
    dq = dq.reshape(b, hq, tq, d).permute(0, 2, 1, 3).to(q.dtype)
    return dq, dk[:, :, 0].permute(0, 2, 1, 3).to(k.dtype), dv[:, :, 0].permute(0, 2, 1, 3).to(
        v.dtype)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, masks: _Masks, softcap: float | None, scale: float):
        ctx.set_materialize_grads(False)  # an unused lse gets None, not zeros: see backward
        ctx.masks, ctx.softcap, ctx.scale = masks, softcap, scale
        ctx.flash = softcap is None and masks.flash_ok and not q.is_cuda and \
            q.shape[-1] == v.shape[-1]
        if ctx.flash:
            out, lse, saved = _flash_forward(q, k, v, masks.causal, scale)
            ctx.save_for_backward(q, k, v, *saved)
            return out, lse
        ctx.save_for_backward(q, k, v)
        return _math_forward(q, k, v, masks, softcap, scale)

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, *saved = ctx.saved_tensors
        if dout is None and dlse is None:
            return None, None, None, None, None, None
        if dout is None:
            dout = torch.zeros_like(q[..., :v.shape[-1]])
        if ctx.flash and dlse is None:  # torch's fused backward: the lse unused downstream
            dq, dk, dv = _flash_backward(q, k, v, dout, saved, ctx.masks.causal, ctx.scale)
        else:
            dq, dk, dv = _backward(q, k, v, dout, dlse, ctx.masks, ctx.softcap, ctx.scale)
        return dq, dk, dv, None, None, None
