"""Linear attention reference (Katharopoulos et al. 2020; RetNet, Sun et al. 2023): 3 forms."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import c, einsum, exp, f
from lmspec.spec.linear_attention import check_args, check_decay


def phi(x, feature_map: str):
    """The feature map, elementwise: identity, elu(x) + 1, relu."""
    x = f(x)
    if feature_map == "relu":
        return f(np.maximum(x, c(0.0)))
    if feature_map == "elu1":
        return f(np.where(x > 0, f(x + c(1.0)), exp(np.minimum(x, c(0.0)))))
    return x


def phi_grad(x, feature_map: str):
    """phi'(x): relu'(0) = 0, elu1'(0) = 1."""
    x = f(x)
    if feature_map == "relu":
        return f(x > 0)
    if feature_map == "elu1":
        return f(np.where(x > 0, c(1.0), exp(np.minimum(x, c(0.0)))))
    return f(np.ones_like(x))


def gamma_pow(log_decay, h: int, exponents) -> np.ndarray:
    """gamma_h ** e = exp(e * log_decay_h), shape (H, *exponents.shape); 1 without decay."""
    e = np.asarray(exponents, np.float64)
    if log_decay is None:
        return f(np.ones((h, *e.shape)))
    ld = f(log_decay).reshape((h,) + (1,) * e.ndim)
    return exp(f(f(e) * ld))


def decay_mask(log_decay, h: int, n: int) -> np.ndarray:
    """D_ts = gamma^(t - s) for s <= t, else 0: (H, n, n)."""
    t = np.arange(n)
    lower = t[:, None] >= t[None, :]
    return np.where(lower, gamma_pow(log_decay, h, np.where(lower, t[:, None] - t[None], 0)),
                    c(0.0))


def heads_first(x):
    """(B, T, H, D) -> (B, H, T, D)."""
    return f(x).transpose(0, 2, 1, 3)


def state0(initial_state, b: int, h: int, dk: int, dv: int):
    return f(np.zeros((b, h, dk, dv))) if initial_state is None else f(initial_state)


def block(qf, kf, vf, s, log_decay, scale: float):
    """One chunk of L rows from state s: (out (B, H, L, Dv), next state). Features given."""
    h, n = qf.shape[1], qf.shape[2]
    local = np.arange(n)
    scores = f(einsum("bhtk,bhsk->bhts", qf, kf) * decay_mask(log_decay, h, n))  # (B, H, L, L)
    intra = einsum("bhts,bhsv->bhtv", scores, vf)
    inter = f(gamma_pow(log_decay, h, local + 1)[..., None] * einsum("bhtk,bhkv->bhtv", qf, s))
    out = f(f(intra + inter) * c(scale))
    k_decayed = f(kf * gamma_pow(log_decay, h, n - 1 - local)[..., None])
    s = f(f(gamma_pow(log_decay, h, np.array(n))[:, None, None] * s)
          + einsum("bhsk,bhsv->bhkv", k_decayed, vf))
    return out, s


def _parallel(qf, kf, vf, s0, log_decay, scale: float):
    """The whole sequence as one block: the masked (phi(Q) phi(K)^T * D) V form."""
    return block(qf, kf, vf, s0, log_decay, scale)


def _recurrent(qf, kf, vf, s, log_decay, scale: float):
    h, t = qf.shape[1], qf.shape[2]
    g = gamma_pow(log_decay, h, np.array(1))[:, None, None]  # (H, 1, 1)
    outs = []
    for i in range(t):
        s = f(f(g * s) + f(kf[:, :, i, :, None] * vf[:, :, i, None, :]))  # (B, H, Dk, Dv)
        outs.append(f(einsum("bhk,bhkv->bhv", qf[:, :, i], s) * c(scale)))
    out = np.stack(outs, axis=2) if outs else f(np.zeros(qf.shape[:3] + vf.shape[3:]))
    return out, s


def _chunked(qf, kf, vf, s, log_decay, scale: float, chunk_size: int):
    outs = [f(np.zeros(qf.shape[:3][:2] + (0, vf.shape[3])))]
    for c0 in range(0, qf.shape[2], chunk_size):
        rows = slice(c0, c0 + chunk_size)
        o, s = block(qf[:, :, rows], kf[:, :, rows], vf[:, :, rows], s, log_decay, scale)
        outs.append(o)
    return np.concatenate(outs, axis=2), s


def validate(q, k, v, log_decay, initial_state, **params):
    check_args(q, k, v, log_decay, initial_state, **params)
    if log_decay is not None and np.size(log_decay):
        ld = np.asarray(log_decay, np.float64)
        check_decay(float(ld.max()), bool(np.isfinite(ld).all()))


def linear_attention(q, k, v, log_decay=None, initial_state=None, *, feature_map="identity",
                     form="parallel", chunk_size=16, scale=None):
    validate(q, k, v, log_decay, initial_state, feature_map=feature_map, form=form,
             chunk_size=chunk_size, scale=scale)
    scale = 1.0 if scale is None else scale
    b, _, h, dk = q.shape
    qf, kf = (heads_first(phi(x, feature_map)) for x in (q, k))  # (B, H, T, Dk)
    vf, s0 = heads_first(v), state0(initial_state, b, h, dk, v.shape[3])
    if form == "recurrent":
        out, s = _recurrent(qf, kf, vf, s0, log_decay, scale)
    elif form == "chunked":
        out, s = _chunked(qf, kf, vf, s0, log_decay, scale, int(chunk_size))
    else:
        out, s = _parallel(qf, kf, vf, s0, log_decay, scale)
    return out.transpose(0, 2, 1, 3), s  # (B, T, H, Dv), (B, H, Dk, Dv)


def feature_vjp(dout, dstate, qf, kf, vf, s0, log_decay, scale: float):
    """Gradients of the parallel form w.r.t. the features: dQ, dK, dV (B, H, T, .), dS0."""
    h, n = qf.shape[1], qf.shape[2]
    t = np.arange(n)
    mask = decay_mask(log_decay, h, n)  # (H, T, T)
    g_in = gamma_pow(log_decay, h, t + 1)[..., None]  # gamma^(t+1): the initial state's decay
    g_out = gamma_pow(log_decay, h, n - 1 - t)[..., None]  # gamma^(T-1-s): into the final state
    dos = f(dout * c(scale))  # (B, H, T, Dv)
    scores = f(einsum("bhtk,bhsk->bhts", qf, kf) * mask)
    dv = f(einsum("bhts,bhtv->bhsv", scores, dos)
           + f(g_out * einsum("bhsk,bhkv->bhsv", kf, dstate)))
    dp = f(einsum("bhtv,bhsv->bhts", dos, vf) * mask)
    dq = f(einsum("bhts,bhsk->bhtk", dp, kf) + f(g_in * einsum("bhtv,bhkv->bhtk", dos, s0)))
    dk = f(einsum("bhts,bhtk->bhsk", dp, qf) + f(g_out * einsum("bhsv,bhkv->bhsk", vf, dstate)))
    ds0 = f(einsum("bhtk,bhtv->bhkv", f(g_in * qf), dos)
            + f(gamma_pow(log_decay, h, np.array(n))[:, None, None] * dstate))
    return dq, dk, dv, ds0


def linear_attention_vjp(cotangents, q, k, v, log_decay=None, initial_state=None, *,
                         feature_map="identity", form="parallel", chunk_size=16, scale=None):
    """The same gradient for every form (they compute one function)."""
    dout, dstate = f(cotangents[0]), f(cotangents[1])
    scale = 1.0 if scale is None else scale
    b, _, h, dk_ = q.shape
    qf, kf = (heads_first(phi(x, feature_map)) for x in (q, k))
    vf, s0 = heads_first(v), state0(initial_state, b, h, dk_, v.shape[3])
    dq, dk, dv, ds0 = feature_vjp(heads_first(dout), dstate, qf, kf, vf, s0, log_decay, scale)
    def back(g, x):  # (B, H, T, Dk) -> (B, T, H, Dk), through phi
        return f(g.transpose(0, 2, 1, 3) * phi_grad(x, feature_map))

    return {"q": back(dq, q), "k": back(dk, k), "v": dv.transpose(0, 2, 1, 3),
            "initial_state": None if initial_state is None else ds0}


def _abs_features(q, k, v, initial_state, feature_map):
    qf, kf = (np.abs(heads_first(phi(x, feature_map))) for x in (q, k))
    b, _, h, dk = q.shape
    return qf, kf, np.abs(heads_first(v)), np.abs(state0(initial_state, b, h, dk, v.shape[3]))


def linear_attention_magnitude(q, k, v, log_decay=None, initial_state=None, *,
                               feature_map="identity", form="parallel", chunk_size=16,
                               scale=None):
    """Error scale: the parallel form on |phi(q)|, |phi(k)|, |v|, |S0| (the decay kept: its
    absolute value would be a growth, not a magnitude)."""
    qf, kf, vf, s0 = _abs_features(q, k, v, initial_state, feature_map)
    out, s = _parallel(qf, kf, vf, s0, log_decay, 1.0 if scale is None else scale)
    return out.transpose(0, 2, 1, 3), s


def linear_attention_vjp_magnitude(cotangents, q, k, v, log_decay=None, initial_state=None, *,
                                   feature_map="identity", form="parallel", chunk_size=16,
                                   scale=None):
    dout, dstate = (np.abs(np.asarray(t, np.float64)) for t in cotangents)
    qf, kf, vf, s0 = _abs_features(q, k, v, initial_state, feature_map)
    dq, dk, dv, ds0 = feature_vjp(heads_first(dout), dstate, qf, kf, vf, s0, log_decay,
                                  1.0 if scale is None else scale)
    def back(g, x):
        return g.transpose(0, 2, 1, 3) * np.abs(phi_grad(x, feature_map))

    return {"q": back(dq, q), "k": back(dk, k), "v": dv.transpose(0, 2, 1, 3),
            "initial_state": None if initial_state is None else ds0}
