"""Whole decoder models (spec/model.py) composed of this backend's components, jitted per config.

One traced forward serves ``model`` (logits and caches) and the loss; ``model_grad`` is
``jax.value_and_grad`` of the loss over the trainable parameters (buffers held fixed), jitted
with the config static (a frozen, hashable dataclass). Host-side value checks (token and target
ranges, non-negative positions, the valid-target count) run before the jitted call; inside the
trace the components keep their shape checks and skip their value checks (tracers).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lmspec.backends.jax_xla._common import einsum
from lmspec.backends.jax_xla.cross_entropy import cross_entropy
from lmspec.backends.jax_xla.embedding import embedding
from lmspec.backends.jax_xla.lightning_attention import lightning_attention
from lmspec.backends.jax_xla.mla import mla
from lmspec.backends.jax_xla.moe_balance_loss import moe_balance_loss
from lmspec.backends.jax_xla.moe_layer import moe_layer
from lmspec.backends.jax_xla.moe_router import moe_router
from lmspec.backends.jax_xla.rms_norm import rms_norm
from lmspec.backends.jax_xla.rope import rope
from lmspec.backends.jax_xla.sdpa import sdpa
from lmspec.backends.jax_xla.swiglu import swiglu
from lmspec.spec.cross_entropy import check_targets
from lmspec.spec.model import (
    IGNORE_INDEX,
    ModelConfig,
    cached_length,
    check_args,
    check_tokens,
    check_weights,
    default_positions,
    lightning_log_decay,
    trainable,
)

__all__ = ["model", "model_grad", "model_loss"]


def _mm(x, w, b=None):
    """x (..., in) @ w (in, out), float32 accumulation, rounded to x's dtype (+ b after)."""
    y = einsum("...i,io->...o", x, w).astype(x.dtype)
    return y if b is None else y + b.astype(x.dtype)


def _rope_kw(c: ModelConfig) -> dict:
    return dict(theta=c.rope_theta, rotary_dim=c.rotary_dim, interleaved=c.rope_interleaved,
                scaling=c.rope_scaling)


# ----------------------------------------------------------------------------- mixers


def _gqa(P, pre, h, pos, seg, cache, c: ModelConfig, i: int):
    """h (B, T, D) -> out (B, T, D), cache {"k", "v": (B, Tc + T, Hkv, hd)} (rotated k)."""
    b, t, _ = h.shape
    H, hkv, hd = c.n_heads, c.kv_heads, c.hd
    bias = (lambda n: P[pre + n]) if c.attention_bias else (lambda n: None)
    q = _mm(h, P[pre + "wq"], bias("bq")).reshape(b, t, H, hd)
    k = _mm(h, P[pre + "wk"], bias("bk")).reshape(b, t, hkv, hd)
    v = _mm(h, P[pre + "wv"], bias("bv")).reshape(b, t, hkv, hd)
    if c.qk_norm:  # Qwen3: per-head RMSNorm before RoPE
        q = rms_norm(q, P[pre + "q_norm"], eps=c.norm_eps)
        k = rms_norm(k, P[pre + "k_norm"], eps=c.norm_eps)
    q, k = rope(q, pos, **_rope_kw(c)), rope(k, pos, **_rope_kw(c))
    if cache is not None:
        k = jnp.concatenate([cache["k"].astype(k.dtype), k], axis=1)  # (B, Tk, Hkv, hd)
        v = jnp.concatenate([cache["v"].astype(v.dtype), v], axis=1)
    o, _ = sdpa(q, k, v, seg, seg, causal=True, window=c.window(i))  # (B, T, H, hd)
    return _mm(o.reshape(b, t, H * hd), P[pre + "wo"]), {"k": k, "v": v}


def _mla(P, pre, h, pos, seg, cache, c: ModelConfig, i: int):
    """h (B, T, D) -> out, cache {"c_kv": (B, Tk, dc), "k_rope": (B, Tk, dr)}. The mla
    component takes no segment ids (see the module's report)."""
    m = c.mla
    out, c_kv, k_rope = mla(
        h, pos, P[pre + "w_uq"], P[pre + "w_dkv"], P[pre + "kv_norm"], P[pre + "w_ukv"],
        P[pre + "wo"], P.get(pre + "w_dq"), P.get(pre + "q_norm"),
        None if cache is None else cache["c_kv"], None if cache is None else cache["k_rope"],
        n_heads=c.n_heads, qk_nope_head_dim=m.qk_nope_head_dim,
        qk_rope_head_dim=m.qk_rope_head_dim, v_head_dim=m.v_head_dim,
        kv_lora_rank=m.kv_lora_rank, theta=c.rope_theta, scaling=c.rope_scaling,
        mscale_all_dim=m.mscale_all_dim, interleaved=c.rope_interleaved, eps=c.norm_eps,
        causal=True, form=m.form)
    return out, {"c_kv": c_kv, "k_rope": k_rope}


def _lightning(P, pre, h, pos, seg, cache, c: ModelConfig, i: int):
    """MiniMax-01 lightning mixer: h (B, T, D) -> out, cache {"state": (B, H, hd, hd) f32}."""
    b, t, _ = h.shape
    H, hd = c.n_heads, c.hd
    q, k, v = (jax.nn.silu(_mm(h, P[pre + n])).reshape(b, t, H, hd) for n in ("wq", "wk", "wv"))
    decay = jnp.asarray(lightning_log_decay(c, i), jnp.float32)  # (H,)
    o, state = lightning_attention(q, k, v, decay, None if cache is None else cache["state"],
                                   block_size=c.hybrid.block_size)
    o = rms_norm(o.reshape(b, t, H * hd), P[pre + "out_norm"], eps=c.norm_eps)
    o = o * jax.nn.sigmoid(_mm(h, P[pre + "w_gate"]))  # (B, T, H hd)
    return _mm(o, P[pre + "wo"]), {"state": state}


# ----------------------------------------------------------------------------- FFNs


def _moe(P, pre, h, c: ModelConfig):
    """h (B, T, D) -> y (B, T, D), and the router's (logits (N, E), ids (N, k), scores)."""
    m, (b, t, d) = c.moe, h.shape
    q = pre + "moe."
    h2 = h.reshape(b * t, d)  # (N, D): capacity counts all B T tokens
    logits = _mm(h2, P[q + "router"])  # (N, E)
    ids, w, scores = moe_router(
        logits, P.get(q + "router_bias"), top_k=m.top_k, score_func=m.score_func,
        norm_topk_prob=m.norm_topk_prob, n_group=m.n_group, topk_group=m.topk_group,
        routed_scaling_factor=m.routed_scaling_factor, masked_group_fill=m.masked_group_fill)
    y, _ = moe_layer(h2, ids, w, P[q + "w_gate"], P[q + "w_up"], P[q + "w_down"],
                     P.get(q + "shared.w_gate"), P.get(q + "shared.w_up"),
                     P.get(q + "shared.w_down"), P.get(q + "shared_gate"),
                     capacity_factor=m.capacity_factor)
    return y.reshape(b, t, d), (logits, ids, scores)


# ----------------------------------------------------------------------------- the stack


def _layer(P, pre, x, pos, seg, cache, c: ModelConfig, i: int, kind: str, routers: list):
    """One pre-norm block (mixer, then FFN) on the residual stream; returns x and the cache."""
    mixer = _lightning if kind == "linear" else _mla if c.mla is not None else _gqa
    h = rms_norm(x, P[pre + "attn_norm"], eps=c.norm_eps)
    out, cache = mixer(P, pre + "attn.", h, pos, seg, cache, c, i)
    x = x + out
    h = rms_norm(x, P[pre + "ffn_norm"], eps=c.norm_eps)
    if c.is_moe_layer(i):
        out, r = _moe(P, pre, h, c)
        routers.append(r)
    else:
        out = swiglu(h, P[pre + "ffn.w_gate"], P[pre + "ffn.w_up"], P[pre + "ffn.w_down"])
    return x + out, cache


def _head(P, c: ModelConfig):
    return P["embed"].T if c.tie_embeddings else P["lm_head"]  # (D, V)


def _shifted(a, k: int, fill):
    """a (B, T) moved k to the left, the last min(k, T) columns ``fill`` (k static)."""
    b, t = a.shape
    return jnp.concatenate([a[:, k:], jnp.full((b, min(k, t)), fill, a.dtype)], axis=1)


def _mtp(P, x, tokens, pos, seg, c: ModelConfig, routers: list) -> list:
    """DeepSeek-V3's MTP modules on the main stack's last hidden state x (before the final
    norm): each module's logits (B, T, V)."""
    out, h = [], x
    for j in range(c.mtp_depth):
        pre = f"mtp.{j}."
        e = embedding(_shifted(tokens, j + 1, 0), P["embed"])  # t_{i+j+1}
        cat = jnp.concatenate([rms_norm(e, P[pre + "enorm"], eps=c.norm_eps),
                               rms_norm(h, P[pre + "hnorm"], eps=c.norm_eps)], axis=-1)
        h, _ = _layer(P, pre, _mm(cat, P[pre + "eh_proj"]), pos, seg, None, c,
                      c.n_layers + j, "softmax", routers)
        out.append(_mm(rms_norm(h, P[pre + "final_norm"], eps=c.norm_eps), _head(P, c)))
    return out


def _forward(P, tokens, pos, seg, caches, c: ModelConfig, mtp: bool = False):
    """Traceable: tokens, pos (B, T) int32, seg (B, T) or None -> logits (B, T, V), the
    extended caches (one dict per layer), the MoE layers' router outputs (the MTP modules'
    last) and (with ``mtp``) the MTP modules' logits."""
    x = embedding(tokens, P["embed"])  # (B, T, D) residual stream, compute dtype
    new_caches, routers = [], []
    for i, kind in enumerate(c.layer_kinds()):
        x, cache = _layer(P, f"layers.{i}.", x, pos, seg, None if caches is None else caches[i],
                          c, i, kind, routers)
        new_caches.append(cache)
    logits = _mm(rms_norm(x, P["final_norm"], eps=c.norm_eps), _head(P, c))
    return logits, new_caches, routers, (_mtp(P, x, tokens, pos, seg, c, routers) if mtp else [])


@functools.partial(jax.jit, static_argnames=("config",))
def _model_jit(P, tokens, pos, seg, caches, config):
    logits, new_caches, *_ = _forward(P, tokens, pos, seg, caches, config)
    return logits, new_caches


def _mtp_targets(targets, seg, k: int):
    """What MTP module k predicts at i: targets[i + k], ignored where there is none or it lies
    in another document."""
    tg = _shifted(targets, k, IGNORE_INDEX)
    return tg if seg is None else jnp.where(_shifted(seg, k, -1) != seg, IGNORE_INDEX, tg)


def _weighted(lg, tg, w, n_div, z_loss: float):
    """sum_i w_i CE_i / n_div: cross_entropy (its fused forward and backward) of each row
    alone, vmapped (0 on an ignored row), so the rounding is the unweighted path's."""
    v = lg.shape[-1]
    per = jax.vmap(lambda r, t: cross_entropy(r[None], t[None], z_loss=z_loss))(
        lg.reshape(-1, v), tg.reshape(-1))  # (N,)
    return jnp.sum(per * w.reshape(-1).astype(jnp.float32)) / n_div


def _objective(train, buffers, tokens, targets, pos, seg, n_div, config: ModelConfig,
               weights=None):
    """loss (0-d f32) and (ce, balance, mtp, loads (n_moe, E) int32); n_div = max(n, 1).
    ``weights`` None (a pytree leaf of its own: unweighted calls compile as before) or (B, T)
    float32 per-target weights of the main head's CE."""
    logits, _, routers, mtp_logits = _forward({**train, **buffers}, tokens, pos, seg, None,
                                              config, mtp=True)
    v = logits.shape[-1]

    def summed(lg, tg):  # sum over valid targets / n, as cross_entropy's mean * n_valid / n
        n_k = jnp.sum(tg != IGNORE_INDEX).astype(jnp.float32)
        return cross_entropy(lg.reshape(-1, v), tg.reshape(-1), z_loss=config.z_loss) * (
            n_k / n_div)

    ce = summed(logits, targets) if weights is None else _weighted(
        logits, targets, weights, n_div, config.z_loss)
    mtp = jnp.float32(0.0)
    for k, lg in enumerate(mtp_logits, 1):
        mtp = mtp + summed(lg, _mtp_targets(targets, seg, k)) * (
            config.mtp_loss_weight / config.mtp_depth)
    balance, loads, m = jnp.float32(0.0), [], config.moe
    for logits_r, ids, scores in routers:  # (N, E), (N, k), (N, E)
        loads.append(jnp.bincount(ids.reshape(-1), length=m.n_experts))
        if m.balance_coef:
            balance = balance + moe_balance_loss(scores, ids, kind=m.balance_loss,
                                                 n_seq=tokens.shape[0], alpha=m.balance_coef)
        if m.router_z_coef:
            balance = balance + moe_balance_loss(logits_r, None, kind="z",
                                                 alpha=m.router_z_coef)
    e = 0 if m is None else m.n_experts
    loads = jnp.stack(loads) if loads else jnp.zeros((0, e), jnp.int32)
    loss = (ce + balance + mtp).astype(jnp.float32)
    return loss, tuple(a.astype(jnp.float32) for a in (ce, balance, mtp)) + (
        loads.astype(jnp.int32),)


_loss_jit = jax.jit(_objective, static_argnames=("config",))
_grad_jit = jax.jit(jax.value_and_grad(_objective, has_aux=True), static_argnames=("config",))


# ----------------------------------------------------------------------------- host side


def _int32(a):
    return None if a is None else jnp.asarray(np.asarray(a).astype(np.int32))


def _prepare(params, tokens, positions, segment_ids, caches, config):
    """Host checks (shapes, token range, positions >= 0); int32 device tokens, positions
    (the spec's default when None) and segment ids."""
    check_args(params, tokens, positions, segment_ids, caches, config=config)
    toks = np.asarray(tokens)
    check_tokens(toks, config.vocab_size)
    b, t = toks.shape
    if positions is None:
        positions = default_positions(b, t, segment_ids, cached_length(caches))
    pos = np.asarray(positions)
    if pos.size and pos.min() < 0:
        raise ValueError(f"positions: expected values >= 0, got {int(pos.min())}")
    return _int32(toks), _int32(pos), _int32(segment_ids)


def model(params, tokens, positions=None, segment_ids=None, caches=None, *,
          config: ModelConfig, use_cache: bool = False):
    toks, pos, seg = _prepare(params, tokens, positions, segment_ids, caches, config)
    if caches is not None:
        caches = [dict(layer) for layer in caches]
    logits, new_caches = _model_jit(dict(params), toks, pos, seg, caches, config)
    return logits, (new_caches if use_cache or caches is not None else None)


def _loss_inputs(params, tokens, targets, positions, segment_ids, config, n_tokens,
                 weights=None):
    toks, pos, seg = _prepare(params, tokens, positions, segment_ids, None, config)
    check_weights(weights, tuple(toks.shape))  # the rest of check_args ran in _prepare
    tg = np.asarray(targets)
    if tg.shape != tuple(toks.shape):
        raise ValueError(f"targets: expected shape {tuple(toks.shape)}, got {tg.shape}")
    if tg.dtype.kind not in "iu":
        raise TypeError("targets: expected an integer array")
    check_targets(tg, config.vocab_size, IGNORE_INDEX)
    n_valid = int(np.sum(tg != IGNORE_INDEX))
    if n_tokens is not None and n_tokens < n_valid:
        raise ValueError(f"n_tokens: expected >= the {n_valid} valid targets, got {n_tokens}")
    n = n_valid if n_tokens is None else int(n_tokens)
    names = set(trainable(config))
    train = {k: a for k, a in params.items() if k in names}
    buffers = {k: a for k, a in params.items() if k not in names}
    n_div = jnp.float32(max(n, 1))  # traced: no recompile per count
    w = None if weights is None else jnp.asarray(np.asarray(weights, np.float32))
    return (train, buffers, toks, _int32(tg), pos, seg, n_div), w, n_valid


def _metrics(aux, n_valid: int) -> dict:
    ce, balance, mtp, loads = aux
    return {"ce": float(ce), "balance": float(balance), "mtp": float(mtp), "n_tokens": n_valid,
            "loads": loads}


def model_loss(params, tokens, targets, positions=None, segment_ids=None, *,
               config: ModelConfig, n_tokens: int | None = None, weights=None):
    args, w, n_valid = _loss_inputs(params, tokens, targets, positions, segment_ids, config,
                                    n_tokens, weights)
    loss, aux = _loss_jit(*args, config=config, weights=w)
    return loss, _metrics(aux, n_valid)


def model_grad(params, tokens, targets, positions=None, segment_ids=None, *,
               config: ModelConfig, n_tokens: int | None = None, weights=None):
    args, w, n_valid = _loss_inputs(params, tokens, targets, positions, segment_ids, config,
                                    n_tokens, weights)
    (loss, aux), grads = _grad_jit(*args, config=config, weights=w)
    return loss, _metrics(aux, n_valid), {n: grads[n] for n in trainable(config)}
