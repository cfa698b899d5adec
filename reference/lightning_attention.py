"""Lightning Attention reference (Qin et al. 2024; MiniMax-01): the block form, block by block."""

from __future__ import annotations

import numpy as np

from lmspec.reference._numerics import c, einsum, f
from lmspec.reference.linear_attention import (
    decay_mask,
    gamma_pow,
    heads_first,
    linear_attention_magnitude,
    linear_attention_vjp,
    linear_attention_vjp_magnitude,
    state0,
)
from lmspec.reference.linear_attention import validate as _validate_linear
from lmspec.spec.lightning_attention import check_args


def _lightning_block(qi, ki, vi, kv, log_decay, scale: float):
    """Block i (B, H, L, .) from the state KV (B, H, Dk, Dv): (O_i, next KV)."""
    h, n = qi.shape[1], qi.shape[2]
    local = np.arange(n)
    o_intra = einsum("bhts,bhsv->bhtv",
                     f(einsum("bhtk,bhsk->bhts", qi, ki) * decay_mask(log_decay, h, n)), vi)
    o_inter = f(gamma_pow(log_decay, h, local + 1)[..., None]  # Lambda = diag(gamma^(t+1))
                * einsum("bhtk,bhkv->bhtv", qi, kv))
    kv = f(f(gamma_pow(log_decay, h, np.array(n))[:, None, None] * kv)
           + einsum("bhsk,bhsv->bhkv", f(gamma_pow(log_decay, h, n - 1 - local)[..., None] * ki),
                    vi))
    return f(f(o_intra + o_inter) * c(scale)), kv


def lightning_attention(q, k, v, log_decay=None, initial_state=None, *, block_size=16,
                        scale=None):
    check_args(q, k, v, log_decay, initial_state, block_size=block_size, scale=scale)
    _validate_linear(q, k, v, log_decay, initial_state)
    scale = 1.0 if scale is None else scale
    b, t, h, dk = q.shape
    qh, kh, vh = heads_first(q), heads_first(k), heads_first(v)  # (B, H, T, .)
    kv = state0(initial_state, b, h, dk, v.shape[3])
    outs = [f(np.zeros((b, h, 0, v.shape[3])))]
    for i0 in range(0, t, int(block_size)):
        rows = slice(i0, i0 + int(block_size))
        o, kv = _lightning_block(qh[:, :, rows], kh[:, :, rows], vh[:, :, rows], kv, log_decay,
                                 scale)
        outs.append(o)
    return np.concatenate(outs, axis=2).transpose(0, 2, 1, 3), kv


def lightning_attention_vjp(cotangents, q, k, v, log_decay=None, initial_state=None, *,
                            block_size=16, scale=None):
    """linear_attention's gradient with the identity feature map (the same function)."""
    return linear_attention_vjp(cotangents, q, k, v, log_decay, initial_state, scale=scale)


def lightning_attention_magnitude(q, k, v, log_decay=None, initial_state=None, *,
                                  block_size=16, scale=None):
    return linear_attention_magnitude(q, k, v, log_decay, initial_state, scale=scale)


def lightning_attention_vjp_magnitude(cotangents, q, k, v, log_decay=None, initial_state=None,
                                      *, block_size=16, scale=None):
    return linear_attention_vjp_magnitude(cotangents, q, k, v, log_decay, initial_state,
                                          scale=scale)
