"""MLA reference (DeepSeek-V2/V3, as HF ``DeepseekV3Attention``): composed of the reference's
rms_norm, rope and sdpa, with a backward composed of their hand-written VJPs."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import einsum, f, matmul, sum_
from lmspec.reference.rms_norm import rms_norm, rms_norm_vjp
from lmspec.reference.rope import rope, rope_vjp
from lmspec.reference.sdpa import sdpa, sdpa_vjp, sdpa_vjp_magnitude
from lmspec.spec.mla import check_args, softmax_scale


def _perm(dr: int, interleaved: bool) -> np.ndarray:
    """Feature order fed to the half-split rope: de-interleave (2i -> i, 2i+1 -> i + dr/2)."""
    return np.concatenate([np.arange(0, dr, 2), np.arange(1, dr, 2)]) if interleaved else (
        np.arange(dr))


def _rot(a, positions, p):
    """a (B, T, H, dr) -> rot(a) in the spec's de-interleaved layout."""
    return rope(a[..., _perm(a.shape[-1], p["interleaved"])], positions, theta=p["theta"],
                scaling=p["scaling"])


def _rot_vjp(g, positions, p):
    da = rope_vjp(g, g, positions, theta=p["theta"], scaling=p["scaling"])["x"]
    out = np.empty_like(da)
    out[..., _perm(g.shape[-1], p["interleaved"])] = da  # the inverse permutation
    return out


def _heads(w_ukv, h, dn):
    """w_ukv (dc, H*(dn+dv)) -> W_uk (dc, H, dn), W_uv (dc, H, dv)."""
    w = f(w_ukv).reshape(w_ukv.shape[0], h, -1)
    return w[..., :dn], w[..., dn:]


def _forward(x, positions, w_uq, w_dkv, kv_norm_weight, w_ukv, w_o, w_dq, q_norm_weight,
             c_kv_cache, k_rope_cache, p):
    """Every intermediate the backward needs, in a dict."""
    b, t, _ = x.shape
    h, dn, dr, dc = p["n_heads"], p["qk_nope_head_dim"], p["qk_rope_head_dim"], p["kv_lora_rank"]
    x = f(x)
    s = {"x": x}
    if w_dq is not None:
        s["qa"] = matmul(x, w_dq)  # (B, T, dq)
        s["qn"] = rms_norm(s["qa"], q_norm_weight, eps=p["eps"])
        q = matmul(s["qn"], w_uq)
    else:
        q = matmul(x, w_uq)
    q = q.reshape(b, t, h, dn + dr)
    s["q_nope"], s["q_pe"] = q[..., :dn], _rot(q[..., dn:], positions, p)
    kv = matmul(x, w_dkv)  # (B, T, dc + dr)
    s["kv_c"] = kv[..., :dc]
    c_new = rms_norm(s["kv_c"], kv_norm_weight, eps=p["eps"])
    kr_new = _rot(kv[..., None, dc:], positions, p)[:, :, 0]  # one shared head
    tc = 0 if c_kv_cache is None else c_kv_cache.shape[1]
    cache_c = np.zeros((b, 0, dc)) if tc == 0 else c_kv_cache
    cache_k = np.zeros((b, 0, dr)) if tc == 0 else k_rope_cache
    s["c"] = np.concatenate([f(cache_c), c_new], axis=1)  # (B, Tk, dc)
    s["kr"] = np.concatenate([f(cache_k), kr_new], axis=1)  # (B, Tk, dr)
    s["tc"] = tc
    w_uk, w_uv = _heads(w_ukv, h, dn)
    if p["form"] == "naive":
        k_nope = einsum("bkc,chn->bkhn", s["c"], w_uk)  # (B, Tk, H, dn)
        kr = np.broadcast_to(s["kr"][:, :, None], k_nope.shape[:3] + (dr,))
        s["qh"] = np.concatenate([s["q_nope"], s["q_pe"]], axis=-1)  # (B, T, H, dn+dr)
        s["kh"] = np.concatenate([k_nope, kr], axis=-1)
        s["vh"] = einsum("bkc,chv->bkhv", s["c"], w_uv)  # (B, Tk, H, dv)
        s["o"], _ = sdpa(s["qh"], s["kh"], s["vh"], causal=p["causal"], scale=p["scale"])
    else:
        q_lat = einsum("bthn,chn->bthc", s["q_nope"], w_uk)  # (B, T, H, dc)
        s["qh"] = np.concatenate([q_lat, s["q_pe"]], axis=-1)  # (B, T, H, dc+dr)
        s["kh"] = np.concatenate([s["c"], s["kr"]], axis=-1)[:, :, None]  # (B, Tk, 1, dc+dr)
        s["vh"] = s["c"][:, :, None]  # (B, Tk, 1, dc)
        s["o_lat"], _ = sdpa(s["qh"], s["kh"], s["vh"], causal=p["causal"], scale=p["scale"])
        s["o"] = einsum("bthc,chv->bthv", s["o_lat"], w_uv)  # (B, T, H, dv)
    s["o_flat"] = s["o"].reshape(b, t, h * p["v_head_dim"])  # (B, T, H*dv)
    s["out"] = matmul(s["o_flat"], w_o)
    return s


def _params(kw):
    kw = dict(kw)
    kw["scale"] = softmax_scale(kw["qk_nope_head_dim"] + kw["qk_rope_head_dim"],
                                kw.get("scaling"), kw.get("mscale_all_dim", 0.0))
    return kw


def _defaults(theta=10000.0, scaling=None, mscale_all_dim=0.0, interleaved=True, eps=1e-6,
              causal=True, form="naive", **dims):
    return _params(dict(dims, theta=theta, scaling=scaling, mscale_all_dim=mscale_all_dim,
                        interleaved=interleaved, eps=eps, causal=causal, form=form))


def _check_positions(positions):
    if np.size(positions) and np.min(positions) < 0:
        raise ValueError(f"positions: expected values >= 0, got {int(np.min(positions))}")


def mla(x, positions, w_uq, w_dkv, kv_norm_weight, w_ukv, w_o, w_dq=None, q_norm_weight=None,
        c_kv_cache=None, k_rope_cache=None, *, n_heads, qk_nope_head_dim, qk_rope_head_dim,
        v_head_dim, kv_lora_rank, theta=10000.0, scaling=None, mscale_all_dim=0.0,
        interleaved=True, eps=1e-6, causal=True, form="naive"):
    dims = dict(n_heads=n_heads, qk_nope_head_dim=qk_nope_head_dim,
                qk_rope_head_dim=qk_rope_head_dim, v_head_dim=v_head_dim,
                kv_lora_rank=kv_lora_rank)
    check_args(x, positions, w_uq, w_dkv, kv_norm_weight, w_ukv, w_o, w_dq, q_norm_weight,
               c_kv_cache, k_rope_cache, **dims, eps=eps, form=form, scaling=scaling)
    _check_positions(positions)
    p = _defaults(theta, scaling, mscale_all_dim, interleaved, eps, causal, form, **dims)
    s = _forward(x, positions, w_uq, w_dkv, kv_norm_weight, w_ukv, w_o, w_dq, q_norm_weight,
                 c_kv_cache, k_rope_cache, p)
    return s["out"], s["c"], s["kr"]


def _attention_vjp(do, s, w_ukv, p, sdpa_grad=sdpa_vjp):
    """do (B, T, H, dv) -> dq_nope, dq_pe (B, T, H, .), dc (B, Tk, dc), dkr (B, Tk, dr), dw_ukv."""
    h, dn = p["n_heads"], p["qk_nope_head_dim"]
    w_uk, w_uv = _heads(w_ukv, h, dn)
    lse_ct = np.zeros(do.shape[:3])
    kw = dict(causal=p["causal"], scale=p["scale"])
    if p["form"] == "naive":
        g = sdpa_grad((do, lse_ct), s["qh"], s["kh"], s["vh"], **kw)
        dq_nope, dq_pe = g["q"][..., :dn], g["q"][..., dn:]
        dk_nope, dkr = g["k"][..., :dn], _sum_heads(g["k"][..., dn:])
        dc = f(einsum("bkhn,chn->bkc", dk_nope, w_uk) + einsum("bkhv,chv->bkc", g["v"], w_uv))
        dw_uk = einsum("bkc,bkhn->chn", s["c"], dk_nope)
        dw_uv = einsum("bkc,bkhv->chv", s["c"], g["v"])
    else:
        dc_dim = s["c"].shape[-1]
        do_lat = einsum("bthv,chv->bthc", do, w_uv)  # (B, T, H, dc)
        dw_uv = einsum("bthc,bthv->chv", s["o_lat"], do)
        g = sdpa_grad((do_lat, lse_ct), s["qh"], s["kh"], s["vh"], **kw)
        dq_lat, dq_pe = g["q"][..., :dc_dim], g["q"][..., dc_dim:]
        dq_nope = einsum("bthc,chn->bthn", dq_lat, w_uk)
        dw_uk = einsum("bthn,bthc->chn", s["q_nope"], dq_lat)
        dc = f(g["k"][:, :, 0, :dc_dim] + g["v"][:, :, 0])
        dkr = g["k"][:, :, 0, dc_dim:]
    dw_ukv = np.concatenate([dw_uk, dw_uv], axis=-1).reshape(w_ukv.shape)
    return dq_nope, dq_pe, dc, dkr, dw_ukv


def _sum_heads(g):
    """(B, Tk, H, dr) -> (B, Tk, dr): the shared rope key's gradient summed over heads."""
    return sum_(g, axis=2)


def mla_vjp(cotangents, x, positions, w_uq, w_dkv, kv_norm_weight, w_ukv, w_o, w_dq=None,
            q_norm_weight=None, c_kv_cache=None, k_rope_cache=None, **kw):
    return _vjp(cotangents, x, positions, w_uq, w_dkv, kv_norm_weight, w_ukv, w_o, w_dq,
                q_norm_weight, c_kv_cache, k_rope_cache, sdpa_vjp, **kw)


def mla_vjp_magnitude(cotangents, **arrays_and_params):
    """Error scale of a correct backward: the generic rule (the backward on absolute inputs
    and cotangents) with sdpa's own backward error model inside, since the attention backward
    cancels (ds = p (dp - rowsum)) where the generic rule would read a tiny scale."""
    a = {k: (np.abs(v) if isinstance(v, np.ndarray) and k != "positions" else v)
         for k, v in arrays_and_params.items()}
    return _vjp(tuple(np.abs(ct) for ct in cotangents), sdpa_grad=sdpa_vjp_magnitude, **a)


def _vjp(cotangents, x, positions, w_uq, w_dkv, kv_norm_weight, w_ukv, w_o, w_dq,
         q_norm_weight, c_kv_cache, k_rope_cache, sdpa_grad, **kw):
    p = _defaults(**kw)
    dout, dc_out, dkr_out = (f(ct) for ct in cotangents)
    s = _forward(x, positions, w_uq, w_dkv, kv_norm_weight, w_ukv, w_o, w_dq, q_norm_weight,
                 c_kv_cache, k_rope_cache, p)
    b, t, d = s["x"].shape
    h = p["n_heads"]
    do = matmul(dout, f(w_o).T)  # (B, T, H*dv)
    grads = {"w_o": matmul(s["o_flat"].reshape(-1, s["o_flat"].shape[-1]).T,
                           dout.reshape(-1, dout.shape[-1]))}
    dq_nope, dq_pe, dc, dkr, grads["w_ukv"] = _attention_vjp(
        do.reshape(b, t, h, p["v_head_dim"]), s, w_ukv, p, sdpa_grad)
    dc, dkr = f(dc + dc_out), f(dkr + dkr_out)  # plus the cache outputs' cotangents
    tc = s["tc"]
    grads["c_kv_cache"] = None if c_kv_cache is None else dc[:, :tc]
    grads["k_rope_cache"] = None if k_rope_cache is None else dkr[:, :tc]
    # latent path: kv = x @ w_dkv; c_new = rms(kv_c) * w; kr_new = rot(kv_r)
    gc = rms_norm_vjp(dc[:, tc:], s["kv_c"], kv_norm_weight, eps=p["eps"])
    grads["kv_norm_weight"] = gc["weight"]
    dkv_r = _rot_vjp(dkr[:, tc:, None], positions, p)[:, :, 0]
    dkv = np.concatenate([gc["x"], dkv_r], axis=-1)  # (B, T, dc + dr)
    x2 = s["x"].reshape(-1, d)
    grads["w_dkv"] = matmul(x2.T, dkv.reshape(-1, dkv.shape[-1]))
    dx = matmul(dkv, f(w_dkv).T)
    # query path
    dq = np.concatenate([dq_nope, _rot_vjp(dq_pe, positions, p)], axis=-1)
    dq = dq.reshape(b, t, w_uq.shape[1])  # (B, T, H*(dn+dr))
    if w_dq is None:
        grads["w_uq"] = matmul(x2.T, dq.reshape(-1, dq.shape[-1]))
        dx = f(dx + matmul(dq, f(w_uq).T))
        grads["w_dq"] = grads["q_norm_weight"] = None
    else:
        qn = s["qn"]
        grads["w_uq"] = matmul(qn.reshape(-1, qn.shape[-1]).T, dq.reshape(-1, dq.shape[-1]))
        gq = rms_norm_vjp(matmul(dq, f(w_uq).T), s["qa"], q_norm_weight, eps=p["eps"])
        grads["q_norm_weight"] = gq["weight"]
        grads["w_dq"] = matmul(x2.T, gq["x"].reshape(-1, gq["x"].shape[-1]))
        dx = f(dx + matmul(gq["x"], f(w_dq).T))
    grads["x"] = dx
    return grads


__all__ = ["mla", "mla_vjp", "mla_vjp_magnitude"]
