"""Whole-model reference: the decoder of spec/model.py composed of the reference's components,
with a backward that chains their hand-written VJPs (each block returns its output and the
closure that takes the output's cotangent back to its input's and its weights')."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import c, f, matmul, sigmoid, sum_
from lmspec.reference.cross_entropy import cross_entropy, cross_entropy_vjp
from lmspec.reference.embedding import embedding, embedding_vjp
from lmspec.reference.lightning_attention import lightning_attention, lightning_attention_vjp
from lmspec.reference.mla import mla, mla_vjp
from lmspec.reference.moe_balance_loss import moe_balance_loss, moe_balance_loss_vjp
from lmspec.reference.moe_layer import moe_layer, moe_layer_vjp
from lmspec.reference.moe_router import moe_router, vjp_at
from lmspec.reference.rms_norm import rms_norm, rms_norm_vjp
from lmspec.reference.rope import rope, rope_vjp
from lmspec.reference.sdpa import sdpa, sdpa_vjp
from lmspec.reference.swiglu import silu, silu_grad, swiglu, swiglu_vjp
from lmspec.spec.model import (
    IGNORE_INDEX,
    cached_length,
    check_args,
    check_tokens,
    default_positions,
    lightning_log_decay,
    trainable,
)


def _acc(grads: dict, name: str, g) -> None:
    grads[name] = g if name not in grads else f(grads[name] + g)


def _rope_kw(cfg) -> dict:
    return dict(theta=cfg.rope_theta, rotary_dim=cfg.rotary_dim, interleaved=cfg.rope_interleaved,
                scaling=cfg.rope_scaling)


def _linear(x, w, b=None):
    y = matmul(x, w)
    return y if b is None else f(y + f(b))


def _linear_back(dy, x, w, grads, wname, bname=None):
    """dy (..., out) -> dx (..., in); accumulates d w (and d b)."""
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    _acc(grads, wname, matmul(x2.T, dy2))
    if bname is not None:
        _acc(grads, bname, sum_(dy2, axis=0))
    return matmul(dy, f(w).T)


# ----------------------------------------------------------------------------- mixers


def _gqa(P, pre, h, pos, seg, cache, cfg, i):
    b, t, _ = h.shape
    H, hkv, hd, bias = cfg.n_heads, cfg.kv_heads, cfg.hd, cfg.attention_bias
    W = {n: P[pre + n] for n in ("wq", "wk", "wv", "wo")}
    q0 = _linear(h, W["wq"], P[pre + "bq"] if bias else None).reshape(b, t, H, hd)
    k0 = _linear(h, W["wk"], P[pre + "bk"] if bias else None).reshape(b, t, hkv, hd)
    v = _linear(h, W["wv"], P[pre + "bv"] if bias else None).reshape(b, t, hkv, hd)
    eps = cfg.norm_eps
    q1 = rms_norm(q0, P[pre + "q_norm"], eps=eps) if cfg.qk_norm else q0
    k1 = rms_norm(k0, P[pre + "k_norm"], eps=eps) if cfg.qk_norm else k0
    q, k = rope(q1, pos, **_rope_kw(cfg)), rope(k1, pos, **_rope_kw(cfg))
    kk = k if cache is None else np.concatenate([f(cache["k"]), k], axis=1)  # (B, Tk, Hkv, hd)
    vv = v if cache is None else np.concatenate([f(cache["v"]), v], axis=1)
    kw = dict(causal=True, window=cfg.window(i))
    o, _ = sdpa(q, kk, vv, seg, seg, **kw)  # (B, T, H, hd)
    o2 = o.reshape(b, t, H * hd)
    out = matmul(o2, W["wo"])

    def back(dout, grads):
        do = _linear_back(dout, o2, W["wo"], grads, pre + "wo").reshape(o.shape)
        g = sdpa_vjp((do, np.zeros((b, t, H))), q, kk, vv, seg, seg, **kw)
        tc = kk.shape[1] - t
        dq = rope_vjp(g["q"], q1, pos, **_rope_kw(cfg))["x"]
        dk = rope_vjp(g["k"][:, tc:], k1, pos, **_rope_kw(cfg))["x"]
        dv = g["v"][:, tc:]
        if cfg.qk_norm:
            gq = rms_norm_vjp(dq, q0, P[pre + "q_norm"], eps=eps)
            gk = rms_norm_vjp(dk, k0, P[pre + "k_norm"], eps=eps)
            dq, dk = gq["x"], gk["x"]
            _acc(grads, pre + "q_norm", gq["weight"])
            _acc(grads, pre + "k_norm", gk["weight"])
        dh = 0
        for n, d in (("q", dq), ("k", dk), ("v", dv)):
            d = d.reshape(b, t, -1)
            dh = f(dh + _linear_back(d, h, W["w" + n], grads, pre + "w" + n,
                                     pre + "b" + n if bias else None))
        return dh

    return out, {"k": kk, "v": vv}, back


_MLA_NAMES = {"w_uq": "w_uq", "w_dkv": "w_dkv", "kv_norm_weight": "kv_norm", "w_ukv": "w_ukv",
              "w_o": "wo", "w_dq": "w_dq", "q_norm_weight": "q_norm"}


def _mla(P, pre, h, pos, seg, cache, cfg, i):
    m = cfg.mla
    arrays = {a: P.get(pre + n) for a, n in _MLA_NAMES.items()}
    arrays.update(c_kv_cache=None if cache is None else cache["c_kv"],
                  k_rope_cache=None if cache is None else cache["k_rope"])
    kw = dict(n_heads=cfg.n_heads, qk_nope_head_dim=m.qk_nope_head_dim,
              qk_rope_head_dim=m.qk_rope_head_dim, v_head_dim=m.v_head_dim,
              kv_lora_rank=m.kv_lora_rank, theta=cfg.rope_theta, scaling=cfg.rope_scaling,
              mscale_all_dim=m.mscale_all_dim,
              interleaved=cfg.rope_interleaved, eps=cfg.norm_eps, causal=True, form=m.form)
    out, c_kv, k_rope = mla(h, pos, **arrays, **kw)

    def back(dout, grads):
        cts = (dout, np.zeros(c_kv.shape), np.zeros(k_rope.shape))
        g = mla_vjp(cts, h, pos, **arrays, **kw)
        for a, n in _MLA_NAMES.items():
            if arrays[a] is not None:
                _acc(grads, pre + n, g[a])
        return g["x"]

    return out, {"c_kv": c_kv, "k_rope": k_rope}, back


def _lightning(P, pre, h, pos, seg, cache, cfg, i):
    b, t, _ = h.shape
    H, hd = cfg.n_heads, cfg.hd
    decay = lightning_log_decay(cfg, i)
    a = {n: _linear(h, P[pre + "w" + n]).reshape(b, t, H, hd) for n in ("q", "k", "v")}
    qkv = {n: silu(x) for n, x in a.items()}
    state0 = None if cache is None else cache["state"]
    kw = dict(block_size=cfg.hybrid.block_size)
    o, state = lightning_attention(qkv["q"], qkv["k"], qkv["v"], decay, state0, **kw)
    o2 = o.reshape(b, t, H * hd)
    nrm = rms_norm(o2, P[pre + "out_norm"], eps=cfg.norm_eps)
    gate = sigmoid(_linear(h, P[pre + "w_gate"]))
    y = f(nrm * gate)
    out = matmul(y, P[pre + "wo"])

    def back(dout, grads):
        dy = _linear_back(dout, y, P[pre + "wo"], grads, pre + "wo")
        dga = f(f(dy * nrm) * f(gate * f(c(1.0) - gate)))
        dh = _linear_back(dga, h, P[pre + "w_gate"], grads, pre + "w_gate")
        gn = rms_norm_vjp(f(dy * gate), o2, P[pre + "out_norm"], eps=cfg.norm_eps)
        _acc(grads, pre + "out_norm", gn["weight"])
        g = lightning_attention_vjp((gn["x"].reshape(o.shape), np.zeros(state.shape)),
                                    qkv["q"], qkv["k"], qkv["v"], decay, state0, **kw)
        for n in ("q", "k", "v"):
            da = f(g[n] * silu_grad(a[n])).reshape(b, t, H * hd)
            dh = f(dh + _linear_back(da, h, P[pre + "w" + n], grads, pre + "w" + n))
        return dh

    return out, {"state": state}, back


# ----------------------------------------------------------------------------- FFNs


def _dense_ffn(P, pre, h, cfg, stats):
    w = [P[pre + "ffn." + n] for n in ("w_gate", "w_up", "w_down")]
    out = swiglu(h, *w)

    def back(dout, grads):
        g = swiglu_vjp(dout, h, *w)
        for n in ("w_gate", "w_up", "w_down"):
            _acc(grads, pre + "ffn." + n, g[n])
        return g["x"]

    return out, back


def _moe(P, pre, h, cfg, stats):
    m, (b, t, d) = cfg.moe, h.shape
    h2 = h.reshape(b * t, d)
    q = pre + "moe."
    lr = matmul(h2, P[q + "router"])  # (N, E) router logits
    rkw = dict(score_func=m.score_func, norm_topk_prob=m.norm_topk_prob,
               routed_scaling_factor=m.routed_scaling_factor)
    ids, w, scores = moe_router(lr, P.get(q + "router_bias"), top_k=m.top_k, n_group=m.n_group,
                                topk_group=m.topk_group, masked_group_fill=m.masked_group_fill,
                                **rkw)
    names = ("w_gate", "w_up", "w_down", "shared.w_gate", "shared.w_up", "shared.w_down",
             "shared_gate")
    ws = [P.get(q + n) for n in names]
    y, _ = moe_layer(h2, ids, w, *ws, capacity_factor=m.capacity_factor)
    layer = {"scores": scores, "ids": ids, "logits": lr, "d_scores": None, "d_logits": None,
             "prefix": pre}
    stats.append(layer)

    def back(dout, grads):
        g = moe_layer_vjp((dout.reshape(b * t, d), None), h2, ids, w, *ws,
                          capacity_factor=m.capacity_factor)
        keys = ("w_gate", "w_up", "w_down", "shared_w_gate", "shared_w_up", "shared_w_down",
                "shared_gate")
        for n, k in zip(names, keys):
            if g.get(k) is not None:
                _acc(grads, q + n, g[k])
        ds = layer["d_scores"] if layer["d_scores"] is not None else np.zeros(scores.shape)
        dl = f(vjp_at((None, g["topk_weights"], ds), lr, ids, **rkw))
        if layer["d_logits"] is not None:
            dl = f(dl + layer["d_logits"])
        dh2 = f(g["x"] + _linear_back(dl, h2, P[q + "router"], grads, q + "router"))
        return dh2.reshape(b, t, d)

    return y.reshape(b, t, d), back


# ----------------------------------------------------------------------------- the stack

_MIXERS = {"linear": _lightning}


def _layer(P, pre, x, pos, seg, cache, config, i, kind, stats, tape):
    """One pre-norm block (mixer, then FFN) on the residual stream x; appends its two
    (norm name, input, backward) entries to ``tape``; returns x and the mixer's cache."""
    eps = config.norm_eps
    mixer = _MIXERS.get(kind, _mla if config.mla is not None else _gqa)
    h = rms_norm(x, P[pre + "attn_norm"], eps=eps)
    out, cache, back = mixer(P, pre + "attn.", h, pos, seg, cache, config, i)
    tape.append(("norm", pre + "attn_norm", x, back))
    x = f(x + out)
    h = rms_norm(x, P[pre + "ffn_norm"], eps=eps)
    ffn = _moe if config.is_moe_layer(i) else _dense_ffn
    out, back = ffn(P, pre, h, config, stats)
    tape.append(("norm", pre + "ffn_norm", x, back))
    return f(x + out), cache


def _blocks_back(dx, entries, P, grads, eps):
    """Back through a run of ``_layer`` tape entries: d output -> d input."""
    for _, norm_name, x_in, back in reversed(entries):
        dh = back(dx, grads)
        gn = rms_norm_vjp(dh, x_in, P[norm_name], eps=eps)
        _acc(grads, norm_name, gn["weight"])
        dx = f(dx + gn["x"])
    return dx


def _shifted(a, k: int, fill):
    """a (B, T) moved k to the left, the last k columns ``fill``."""
    out = np.full_like(a, fill)
    out[:, :max(a.shape[1] - k, 0)] = a[:, k:]
    return out


def _mtp_forward(P, x, tokens, pos, seg, config, stats):
    """DeepSeek-V3's MTP modules on the main stack's last hidden state x (before the final
    norm); per module a record for the loss and the backward."""
    eps, head, recs, h = config.norm_eps, _head(P, config), [], x
    for j in range(config.mtp_depth):
        pre = f"mtp.{j}."
        nxt = _shifted(tokens, j + 1, 0)  # module j reads t_{i+j+1} (0 where none)
        e = embedding(nxt, P["embed"])
        cat = np.concatenate([rms_norm(e, P[pre + "enorm"], eps=eps),
                              rms_norm(h, P[pre + "hnorm"], eps=eps)], axis=-1)
        z = matmul(cat, P[pre + "eh_proj"])
        blocks: list = []
        y, _ = _layer(P, pre, z, pos, seg, None, config, config.n_layers + j, "softmax", stats,
                      blocks)
        yn = rms_norm(y, P[pre + "final_norm"], eps=eps)
        recs.append({"pre": pre, "tokens": nxt, "e": e, "cat": cat, "blocks": blocks, "h": h,
                     "y": y, "yn": yn, "logits": matmul(yn, head)})
        h = y
    return recs


def _head(P, config):
    return P["embed"].T if config.tie_embeddings else P["lm_head"]  # (D, V)


def _forward(params, tokens, positions, segment_ids, caches, config, mtp=False):
    """logits, new caches, MoE stats, the backward tape in forward order, the parameters as
    computed, the tokens, and (with ``mtp``) the MTP modules' records."""
    P = {n: f(a) for n, a in params.items()}
    tokens = np.asarray(tokens)
    check_tokens(tokens, config.vocab_size)
    b, t = tokens.shape
    if positions is None:
        positions = default_positions(b, t, segment_ids, cached_length(caches))
    pos = np.asarray(positions)
    if pos.size and pos.min() < 0:
        raise ValueError(f"positions: expected values >= 0, got {int(pos.min())}")
    seg = None if segment_ids is None else np.asarray(segment_ids)
    x = embedding(tokens, P["embed"])  # (B, T, D)
    tape, new_caches, stats = [("embed", None)], [], []
    for i, kind in enumerate(config.layer_kinds()):
        x, cache = _layer(P, f"layers.{i}.", x, pos, seg, None if caches is None else caches[i],
                          config, i, kind, stats, tape)
        new_caches.append(cache)
    xn = rms_norm(x, P["final_norm"], eps=config.norm_eps)
    head = _head(P, config)
    logits = matmul(xn, head)  # (B, T, V)
    tape.append(("head", x, xn, head))
    recs = _mtp_forward(P, x, tokens, pos, seg, config, stats) if mtp else []
    return logits, new_caches, stats, tape, P, tokens, recs


def _head_back(dlogits, x, xn, norm_name, P, head, grads, config):
    """d logits -> d x through ``logits = rms(x, norm) head``; accumulates head and norm."""
    b, t, v = dlogits.shape
    dhead = matmul(xn.reshape(b * t, -1).T, dlogits.reshape(b * t, v))  # (D, V)
    _acc(grads, "embed" if config.tie_embeddings else "lm_head",
         dhead.T if config.tie_embeddings else dhead)
    g = rms_norm_vjp(matmul(dlogits, f(head).T), x, P[norm_name], eps=config.norm_eps)
    _acc(grads, norm_name, g["weight"])
    return g["x"]


def _mtp_back(d_mtp, recs, P, grads, config):
    """The MTP modules' backward, last first: d (main stack's last hidden state)."""
    eps, d, dh = config.norm_eps, config.d_model, None
    for rec, dl in zip(reversed(recs), reversed(d_mtp)):
        pre = rec["pre"]
        dy = _head_back(dl, rec["y"], rec["yn"], pre + "final_norm", P, _head(P, config),
                        grads, config)
        if dh is not None:
            dy = f(dy + dh)
        dz = _blocks_back(dy, rec["blocks"], P, grads, eps)
        dcat = _linear_back(dz, rec["cat"], P[pre + "eh_proj"], grads, pre + "eh_proj")
        ge = rms_norm_vjp(dcat[..., :d], rec["e"], P[pre + "enorm"], eps=eps)
        _acc(grads, pre + "enorm", ge["weight"])
        _acc(grads, "embed", embedding_vjp(ge["x"], rec["tokens"], P["embed"])["table"])
        gh = rms_norm_vjp(dcat[..., d:], rec["h"], P[pre + "hnorm"], eps=eps)
        _acc(grads, pre + "hnorm", gh["weight"])
        dh = gh["x"]
    return dh


def _backward(dlogits, tape, P, tokens, config, recs=(), d_mtp=()) -> dict:
    grads: dict = {}
    _, x, xn, head = tape[-1]
    dh = _mtp_back(d_mtp, recs, P, grads, config) if recs else None
    dx = _head_back(dlogits, x, xn, "final_norm", P, head, grads, config)
    if dh is not None:
        dx = f(dx + dh)
    dx = _blocks_back(dx, tape[1:-1], P, grads, config.norm_eps)
    _acc(grads, "embed", embedding_vjp(dx, tokens, P["embed"])["table"])
    return {n: grads[n] for n in trainable(config)}


def model(params, tokens, positions=None, segment_ids=None, caches=None, *, config,
          use_cache=False):
    check_args(params, tokens, positions, segment_ids, caches, config=config)
    logits, new_caches, *_ = _forward(params, tokens, positions, segment_ids, caches, config)
    return logits, (new_caches if use_cache or caches is not None else None)


def mtp_targets(targets, segment_ids, k: int):
    """What MTP module k - 1 (k = 1, 2, ...) predicts at position i: targets[i + k], ignored
    where there is none or it lies in another document."""
    tg = _shifted(np.asarray(targets), k, IGNORE_INDEX)
    if segment_ids is not None:
        seg = np.asarray(segment_ids)
        tg[_shifted(seg, k, -1) != seg] = IGNORE_INDEX
    return tg


def _weighted_ce(flat, tg, weights, n: int, z_loss: float):
    """sum_{valid i} w_i CE_i / max(n, 1) and its d / d logits: each row's CE is
    ``cross_entropy`` of that row alone (0 on an ignored row), its gradient that row's
    cotangent scaled by w_i / max(n, 1)."""
    w = f(np.asarray(weights, np.float64).reshape(-1))  # (N,)
    per = np.array([cross_entropy(flat[i:i + 1], tg[i:i + 1], z_loss=z_loss)
                    for i in range(len(tg))], dtype=f(0.0).dtype)  # (N,)
    ce = f(sum_(f(w * per)) / c(max(n, 1)))
    g = cross_entropy_vjp(c(1.0), flat, tg, z_loss=z_loss)["logits"]  # (N, V) / n_valid
    n_valid = max(int(np.sum(tg != IGNORE_INDEX)), 1)
    return ce, f(g * f(w * c(n_valid / max(n, 1)))[:, None])


def _loss(logits, stats, tokens, targets, config, n_tokens, recs=(), segment_ids=None,
          weights=None):
    """loss, metrics, d loss / d logits, d loss / d each MTP module's logits; records the
    balance terms' cotangents in stats."""
    v = logits.shape[-1]
    tg = np.asarray(targets).reshape(-1)
    n_valid = int(np.sum(tg != IGNORE_INDEX))
    n = n_valid if n_tokens is None else int(n_tokens)
    if n_tokens is not None and n_tokens < n_valid:
        raise ValueError(f"n_tokens: expected >= the {n_valid} valid targets, got {n_tokens}")
    ratio = n_valid / max(n, 1)
    flat = logits.reshape(-1, v)
    if weights is None:
        ce = f(cross_entropy(flat, tg, z_loss=config.z_loss) * c(ratio))
        dlogits = cross_entropy_vjp(c(ratio), flat, tg, z_loss=config.z_loss)["logits"]
    else:
        ce, dlogits = _weighted_ce(flat, tg, weights, n, config.z_loss)
    balance = c(0.0)
    m, b = config.moe, np.asarray(tokens).shape[0]
    loads = []
    for layer in stats:
        e = layer["scores"].shape[1]
        loads.append(np.bincount(layer["ids"].reshape(-1), minlength=e))
        if m.balance_coef:
            kw = dict(kind=m.balance_loss, n_seq=b, alpha=m.balance_coef)
            balance = f(balance + moe_balance_loss(layer["scores"], layer["ids"], **kw))
            layer["d_scores"] = moe_balance_loss_vjp(c(1.0), layer["scores"], layer["ids"],
                                                     **kw)["scores"]
        if m.router_z_coef:
            kw = dict(kind="z", alpha=m.router_z_coef)
            balance = f(balance + moe_balance_loss(layer["logits"], None, **kw))
            layer["d_logits"] = moe_balance_loss_vjp(c(1.0), layer["logits"], None,
                                                     **kw)["scores"]
    mtp, d_mtp = c(0.0), []
    for k, rec in enumerate(recs, 1):  # each module: its CE summed over its targets / n
        tg_k = mtp_targets(targets, segment_ids, k).reshape(-1)
        scale = c(config.mtp_loss_weight / config.mtp_depth * int(np.sum(tg_k != IGNORE_INDEX))
                  / max(n, 1))
        flat_k = rec["logits"].reshape(-1, v)
        mtp = f(mtp + f(cross_entropy(flat_k, tg_k, z_loss=config.z_loss) * scale))
        d_mtp.append(cross_entropy_vjp(scale, flat_k, tg_k, z_loss=config.z_loss)["logits"]
                     .reshape(rec["logits"].shape))
    loss = f(f(ce + balance) + mtp)
    e = 0 if m is None else m.n_experts
    metrics = {"ce": float(ce), "balance": float(balance), "mtp": float(mtp),
               "n_tokens": n_valid, "loads": np.array(loads, np.int64).reshape(len(loads), e)}
    return loss, metrics, dlogits.reshape(logits.shape), d_mtp


def _check_targets(tokens, targets) -> None:
    tg = np.asarray(targets)
    if tg.shape != np.asarray(tokens).shape:
        raise ValueError(f"targets: expected shape {np.shape(tokens)}, got {tg.shape}")
    if tg.dtype.kind not in "iu":
        raise TypeError("targets: expected an integer array")


def model_loss(params, tokens, targets, positions=None, segment_ids=None, *, config,
               n_tokens=None, weights=None):
    check_args(params, tokens, positions, segment_ids, None, config=config, weights=weights)
    _check_targets(tokens, targets)
    logits, _, stats, *_, recs = _forward(params, tokens, positions, segment_ids, None, config,
                                          mtp=True)
    loss, metrics, *_ = _loss(logits, stats, tokens, targets, config, n_tokens, recs,
                              segment_ids, weights)
    return loss, metrics


def model_grad(params, tokens, targets, positions=None, segment_ids=None, *, config,
               n_tokens=None, weights=None):
    check_args(params, tokens, positions, segment_ids, None, config=config, weights=weights)
    _check_targets(tokens, targets)
    logits, _, stats, tape, P, toks, recs = _forward(params, tokens, positions, segment_ids,
                                                     None, config, mtp=True)
    loss, metrics, dlogits, d_mtp = _loss(logits, stats, tokens, targets, config, n_tokens,
                                          recs, segment_ids, weights)
    return loss, metrics, _backward(dlogits, tape, P, toks, config, recs, d_mtp)


__all__ = ["model", "model_grad", "model_loss", "mtp_targets", "router_selection"]


def router_selection(params, tokens, positions=None, segment_ids=None, *, config):
    """Per MoE layer (the MTP modules' last): the selection scores u = s + bias (N, E), the
    chosen ids (N, k) and the smallest margin of the choice (between the k-th and (k+1)-th
    largest u of a row, and between the kept and dropped group scores): what conformance
    reads to find knife edges."""
    _, _, stats, *_ = _forward(params, tokens, positions, segment_ids, None, config, mtp=True)
    m, out = config.moe, []
    for layer in stats:  # the main stack's MoE layers, then the MTP modules'
        s = np.asarray(layer["scores"], np.float64)
        bias = params.get(layer["prefix"] + "moe.router_bias")
        u = s if bias is None else s + np.asarray(bias, np.float64)
        margins = [np.inf]
        top = -np.sort(-u, axis=-1)
        if u.shape[1] > m.top_k and u.size:
            margins.append(float(np.min(top[:, m.top_k - 1] - top[:, m.top_k])))
        if m.n_group > 1 and u.size:
            g = -np.sort(-u.reshape(len(u), m.n_group, -1), axis=-1)[..., :2].sum(-1)
            gs = -np.sort(-g, axis=-1)
            if m.topk_group < m.n_group:
                margins.append(float(np.min(gs[:, m.topk_group - 1] - gs[:, m.topk_group])))
        out.append((u, np.sort(layer["ids"], axis=-1), min(margins)))
    return out
