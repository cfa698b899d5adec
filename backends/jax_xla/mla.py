"""Multi-head latent attention (DeepSeek-V2/V3, as HF DeepseekV3Attention) in jitted JAX.

Low precision computes in float32 throughout and rounds the three outputs once. Composed of
this backend's rms_norm and rope; attention is explicit float32 math: T queries over Tc + T
keys, bottom-right causal, so every query sees key 0 and no row is ever fully masked.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lmspec.backends.jax_xla._common import HIGHEST, einsum, f32
from lmspec.backends.jax_xla.rms_norm import rms_norm
from lmspec.backends.jax_xla.rope import rope
from lmspec.spec.mla import check_args, softmax_scale
from lmspec.spec.rope import RopeScaling


def _rot(a, positions, theta: float, scaling, interleaved: bool):
    """a (B, T, H, dr) -> rot(a), de-interleaved layout [rotated evens | rotated odds]."""
    if interleaved:
        a = jnp.concatenate([a[..., 0::2], a[..., 1::2]], axis=-1)
    return rope(a, positions, theta=theta, scaling=scaling)


def _attend(q, k, v, causal: bool, scale: float):
    """q (B, T, H, Dk), k (B, Tk, Hk, Dk), v (B, Tk, Hk, Dv), Hk in {1, H} -> (B, T, H, Dv).
    One shared key head (the absorbed form) is contracted as is, never broadcast per head."""
    shared = k.shape[2] == 1
    s = (einsum("bthd,bkd->bhtk", q, k[:, :, 0]) if shared
         else einsum("bthd,bkhd->bhtk", q, k)) * scale
    if causal:
        t, tk = q.shape[1], k.shape[1]
        hidden = jnp.arange(tk)[None, :] > jnp.arange(t)[:, None] + (tk - t)  # (T, Tk)
        s = jnp.where(hidden, -jnp.inf, s)
    p = jax.nn.softmax(s, axis=-1)
    return einsum("bhtk,bkv->bthv", p, v[:, :, 0]) if shared else einsum(
        "bhtk,bkhv->bthv", p, v)


def _mm(a, w):
    return jnp.matmul(f32(a), f32(w), precision=HIGHEST)


@functools.partial(jax.jit, static_argnames=("dims", "theta", "scaling", "mscale_all_dim",
                                             "interleaved", "eps", "causal", "form"))
def _mla(x, positions, w_uq, w_dkv, kv_norm_weight, w_ukv, w_o, w_dq, q_norm_weight,
         c_kv_cache, k_rope_cache, *, dims, theta, scaling, mscale_all_dim, interleaved, eps,
         causal, form):
    h, dn, dr, dv, dc = dims
    b, t, _ = x.shape
    rot = dict(theta=theta, scaling=scaling, interleaved=interleaved)
    if w_dq is not None:
        q = _mm(rms_norm(_mm(x, w_dq), f32(q_norm_weight), eps=eps), w_uq)
    else:
        q = _mm(x, w_uq)
    q = q.reshape(b, t, h, dn + dr)
    q_nope, q_pe = q[..., :dn], _rot(q[..., dn:], positions, **rot)
    kv = _mm(x, w_dkv)  # (B, T, dc + dr)
    c = rms_norm(kv[..., :dc], f32(kv_norm_weight), eps=eps)  # (B, T, dc)
    kr = _rot(kv[..., None, dc:], positions, **rot)[:, :, 0]  # (B, T, dr): one shared head
    if c_kv_cache is not None:
        c = jnp.concatenate([f32(c_kv_cache), c], axis=1)
        kr = jnp.concatenate([f32(k_rope_cache), kr], axis=1)
    w = f32(w_ukv).reshape(dc, h, dn + dv)
    w_uk, w_uv = w[..., :dn], w[..., dn:]  # (dc, H, dn), (dc, H, dv)
    scale = softmax_scale(dn + dr, scaling, mscale_all_dim)
    if form == "naive":
        k = jnp.concatenate([einsum("bkc,chn->bkhn", c, w_uk),
                             jnp.broadcast_to(kr[:, :, None], kr.shape[:2] + (h, dr))], axis=-1)
        v = einsum("bkc,chv->bkhv", c, w_uv)  # (B, Tk, H, dv)
        o = _attend(jnp.concatenate([q_nope, q_pe], axis=-1), k, v, causal, scale)
    else:
        q_lat = einsum("bthn,chn->bthc", q_nope, w_uk)  # (B, T, H, dc)
        k = jnp.concatenate([c, kr], axis=-1)[:, :, None]  # (B, Tk, 1, dc + dr)
        o_lat = _attend(jnp.concatenate([q_lat, q_pe], axis=-1), k, c[:, :, None], causal, scale)
        o = einsum("bthc,chv->bthv", o_lat, w_uv)  # (B, T, H, dv)
    out = _mm(o.reshape(b, t, h * dv), w_o)
    return out.astype(x.dtype), c.astype(x.dtype), kr.astype(x.dtype)


def mla(x, positions, w_uq, w_dkv, kv_norm_weight, w_ukv, w_o, w_dq=None, q_norm_weight=None,
        c_kv_cache=None, k_rope_cache=None, *, n_heads: int, qk_nope_head_dim: int,
        qk_rope_head_dim: int, v_head_dim: int, kv_lora_rank: int, theta: float = 10000.0,
        scaling: RopeScaling | None = None, mscale_all_dim: float = 0.0,
        interleaved: bool = True, eps: float = 1e-6, causal: bool = True, form: str = "naive"):
    check_args(x, positions, w_uq, w_dkv, kv_norm_weight, w_ukv, w_o, w_dq, q_norm_weight,
               c_kv_cache, k_rope_cache, n_heads=n_heads, qk_nope_head_dim=qk_nope_head_dim,
               qk_rope_head_dim=qk_rope_head_dim, v_head_dim=v_head_dim,
               kv_lora_rank=kv_lora_rank, eps=eps, form=form, scaling=scaling)
    dims = (int(n_heads), int(qk_nope_head_dim), int(qk_rope_head_dim), int(v_head_dim),
            int(kv_lora_rank))
    return _mla(x, positions, w_uq, w_dkv, kv_norm_weight, w_ukv, w_o, w_dq, q_norm_weight,
                c_kv_cache, k_rope_cache, dims=dims, theta=float(theta), scaling=scaling,
                mscale_all_dim=float(mscale_all_dim), interleaved=bool(interleaved),
                eps=float(eps), causal=bool(causal), form=form)
