"""Multi-head latent attention (DeepSeek-V2/V3, as HF DeepseekV3Attention) in torch, autograd.

Low precision computes in float32 throughout (projections, norms, rope, scores, softmax) and
rounds the three outputs once. Composed of this backend's rms_norm and rope; attention is
explicit float32 math: with T queries over Tc + T keys, bottom-right causal, every query sees
key 0, so no row is ever fully masked.
"""

from __future__ import annotations

import torch

from lmspec.backends.torch_triton.rms_norm import rms_norm
from lmspec.backends.torch_triton.rope import rope
from lmspec.spec.mla import check_args, softmax_scale
from lmspec.spec.rope import RopeScaling


def _rot(a, positions, theta: float, scaling, interleaved: bool):
    """a (B, T, H, dr) -> rot(a), de-interleaved layout [rotated evens | rotated odds]."""
    if interleaved:
        a = torch.cat((a[..., 0::2], a[..., 1::2]), dim=-1)
    return rope(a, positions, theta=theta, scaling=scaling)


def _attend(q, k, v, causal: bool, scale: float):
    """q (B, T, H, Dk), k (B, Tk, Hk, Dk), v (B, Tk, Hk, Dv), Hk in {1, H} -> (B, T, H, Dv).
    With one shared key head (the absorbed form) the heads fold into the query rows: one
    (T*H, Dk) x (Dk, Tk) product, never a per-head copy of the latent cache."""
    b, t, h, _ = q.shape
    tk = k.shape[1]
    if k.shape[2] == 1:
        s = (q.reshape(b, t * h, q.shape[3]) @ k[:, :, 0].transpose(1, 2)).reshape(b, t, h, tk)
    else:
        s = torch.einsum("bthd,bkhd->bthk", q, k)
    s = s * scale
    if causal:
        pos_q = torch.arange(t, device=q.device)[:, None, None] + (tk - t)  # (T, 1, 1)
        s = s.masked_fill(torch.arange(tk, device=q.device) > pos_q, float("-inf"))
    p = torch.softmax(s, dim=-1)  # (B, T, H, Tk)
    if v.shape[2] == 1:
        return (p.reshape(b, t * h, tk) @ v[:, :, 0]).reshape(b, t, h, v.shape[3])
    return torch.einsum("bthk,bkhv->bthv", p, v)


def mla(x, positions, w_uq, w_dkv, kv_norm_weight, w_ukv, w_o, w_dq=None, q_norm_weight=None,
        c_kv_cache=None, k_rope_cache=None, *, n_heads: int, qk_nope_head_dim: int,
        qk_rope_head_dim: int, v_head_dim: int, kv_lora_rank: int, theta: float = 10000.0,
        scaling: RopeScaling | None = None, mscale_all_dim: float = 0.0,
        interleaved: bool = True, eps: float = 1e-6, causal: bool = True, form: str = "naive"):
    check_args(x, positions, w_uq, w_dkv, kv_norm_weight, w_ukv, w_o, w_dq, q_norm_weight,
               c_kv_cache, k_rope_cache, n_heads=n_heads, qk_nope_head_dim=qk_nope_head_dim,
               qk_rope_head_dim=qk_rope_head_dim, v_head_dim=v_head_dim,
               kv_lora_rank=kv_lora_rank, eps=eps, form=form, scaling=scaling)
    h, dn, dr, dv, dc = n_heads, qk_nope_head_dim, qk_rope_head_dim, v_head_dim, kv_lora_rank
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    up = lambda a: None if a is None else a.to(compute)  # noqa: E731
    b, t, _ = x.shape
    xf = up(x)
    rot = dict(theta=theta, scaling=scaling, interleaved=interleaved)
    if w_dq is not None:
        q = rms_norm(xf @ up(w_dq), up(q_norm_weight), eps=eps) @ up(w_uq)
    else:
        q = xf @ up(w_uq)
    q = q.reshape(b, t, h, dn + dr)
    q_nope, q_pe = q[..., :dn], _rot(q[..., dn:], positions, **rot)
    kv = xf @ up(w_dkv)  # (B, T, dc + dr)
    c = rms_norm(kv[..., :dc], up(kv_norm_weight), eps=eps)  # (B, T, dc)
    kr = _rot(kv[..., None, dc:], positions, **rot)[:, :, 0]  # (B, T, dr): one shared head
    if c_kv_cache is not None:
        c, kr = torch.cat((up(c_kv_cache), c), dim=1), torch.cat((up(k_rope_cache), kr), dim=1)
    w = up(w_ukv).reshape(dc, h, dn + dv)
    w_uk, w_uv = w[..., :dn], w[..., dn:]  # (dc, H, dn), (dc, H, dv)
    scale = softmax_scale(dn + dr, scaling, mscale_all_dim)
    if form == "naive":
        k_nope = torch.einsum("bkc,chn->bkhn", c, w_uk)  # (B, Tk, H, dn)
        k = torch.cat((k_nope, kr[:, :, None].expand(-1, -1, h, -1)), dim=-1)
        v = torch.einsum("bkc,chv->bkhv", c, w_uv)  # (B, Tk, H, dv)
        o = _attend(torch.cat((q_nope, q_pe), dim=-1), k, v, causal, scale)
    else:
        q_lat = torch.einsum("bthn,chn->bthc", q_nope, w_uk)  # (B, T, H, dc)
        k = torch.cat((c, kr), dim=-1)[:, :, None]  # (B, Tk, 1, dc + dr)
        o_lat = _attend(torch.cat((q_lat, q_pe), dim=-1), k, c[:, :, None], causal, scale)
        o = torch.einsum("bthc,chv->bthv", o_lat, w_uv)  # (B, T, H, dv)
    out = o.reshape(b, t, h * dv) @ up(w_o)
    return out.to(x.dtype), c.to(x.dtype), kr.to(x.dtype)
