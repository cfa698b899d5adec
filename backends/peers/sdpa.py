"""Scaled dot-product attention via torch.nn.functional.scaled_dot_product_attention.

The spec's masks (bottom-right causal, window, segments) are built as one boolean mask: F.sdpa's
own ``is_causal`` is top-left aligned, which differs when Tq != Tk. Fully masked rows: F.sdpa
already returns 0 there with zero gradient (CPU flash kernel; the math path's safe softmax).
The log-sum-exp, which F.sdpa does not return, comes from the CPU flash kernel when no gradient
is needed, else as max + log(sum(exp(s - max))) over the masked float32 scores.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmspec.spec.sdpa import check_args


def _visible(tq: int, tk: int, segment_ids_q, segment_ids_kv, causal: bool,
             window: int | None, device) -> torch.Tensor:
    """Boolean (B or 1, 1, Tq, Tk): may query i (at position i + Tk - Tq) see key j?"""
    pos_q = torch.arange(tq, device=device)[:, None] + (tk - tq)  # (Tq, 1)
    pos_k = torch.arange(tk, device=device)[None, :]  # (1, Tk)
    mask = torch.ones(tq, tk, dtype=torch.bool, device=device)
    if causal:
        mask &= pos_k <= pos_q
    if window is not None:
        mask &= pos_k > pos_q - window
    mask = mask[None, None]  # (1, 1, Tq, Tk)
    if segment_ids_q is not None:
        same = segment_ids_q[:, :, None] == segment_ids_kv[:, None, :]  # (B, Tq, Tk)
        mask = mask & same[:, None]
    return mask


def _lse_flash(q, k, v, mask, scale: float) -> torch.Tensor:
    """(B, H, Tq) float32 lse from aten's CPU flash kernel (no gradient through it)."""
    g = q.shape[1] // k.shape[1]
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=mask.device).masked_fill(
        ~mask, float("-inf"))
    _, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1), 0.0, False,
        attn_mask=bias, scale=scale)
    return lse


def _lse_scores(q, k, mask, scale: float) -> torch.Tensor:
    """(B, H, Tq) float32 lse over the masked scores; differentiable, as max + log sum exp."""
    g = q.shape[1] // k.shape[1]
    kh = k.repeat_interleave(g, dim=1).float()  # (B, Hq, Tk, D): head h reads kv head h // g
    s = (q.float() @ kh.transpose(-1, -2)) * scale  # (B, Hq, Tq, Tk)
    s = s.masked_fill(~mask, float("-inf"))
    # fully masked rows: finite zeros here, -inf in the caller, so no exp(-inf - -inf) NaN
    # reaches the gradient
    s = s.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    # adapter: not torch.logsumexp, whose backward exp(s - lse) loses about ulp(lse) of
    # relative accuracy (20x worse than the max-subtracted form at |s| ~ 30); autograd of
    # this form gives exp(s - m) / sum, as FlashAttention's lse does
    # m: (B, Hq, Tq, 1); torch.amax refuses an empty axis (Tk = 0): zeros there
    m = s.amax(dim=-1, keepdim=True).detach() if s.shape[-1] else s.new_zeros(s.shape[:-1] + (1,))
    return m.squeeze(-1) + torch.log(torch.exp(s - m).sum(dim=-1))


def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def sdpa(q, k, v, segment_ids_q=None, segment_ids_kv=None, *, causal: bool = False,
         window: int | None = None, softcap: float | None = None, scale: float | None = None):
    check_args(q, k, v, segment_ids_q, segment_ids_kv, causal=causal, window=window,
               softcap=softcap, scale=scale)
    if softcap is not None:
        raise NotImplementedError("sdpa: softcap is not supported by "
                                  "torch.nn.functional.scaled_dot_product_attention")
    tq, hq, d = q.shape[1], q.shape[2], q.shape[3]
    tk, hkv = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    mask = _visible(tq, tk, segment_ids_q, segment_ids_kv, causal, window, q.device)
    mask = mask.expand(q.shape[0], 1, tq, tk)  # (B, 1, Tq, Tk)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale,
                                         enable_gqa=hq != hkv)
    flash_ok = (q.device.type == "cpu" and not _needs_grad(q, k, v) and v.shape[3] == d
                and tq > 0 and tk > 0)  # aten's flash lse is the CPU kernel's
    lse = _lse_flash(qt, kt, vt, mask, scale) if flash_ok else _lse_scores(qt, kt, mask, scale)
    # adapter: the flash kernel reports lse 0 on a fully masked row; the spec says -inf
    lse = lse.masked_fill(~mask.any(dim=-1), float("-inf"))  # (B, Hq, Tq)
    return out.transpose(1, 2), lse.transpose(1, 2)
