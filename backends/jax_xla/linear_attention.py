"""Linear attention (Katharopoulos et al. 2020; RetNet, Sun et al. 2023) in jitted JAX.

Parallel (the masked decay product), chunked (lax.scan over full chunks, then the remainder)
and recurrent (lax.scan over tokens) forms; float32 compute, out rounded once, final_state
float32; gradients by jax.vjp through the chosen form.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lmspec.backends.jax_xla._common import F32, einsum, f32, is_tracer
from lmspec.spec.linear_attention import check_args, check_decay


def _phi(x, feature_map: str):
    if feature_map == "relu":
        return jax.nn.relu(x)  # relu'(0) = 0
    if feature_map == "elu1":
        return jax.nn.elu(x) + 1.0  # elu1'(0) = 1
    return x


def gamma_pow(ld, h: int, e):
    """gamma_h ** e = exp(e * log_decay_h): (H, *e.shape); ones without decay."""
    e = jnp.asarray(e, F32)
    if ld is None:
        return jnp.ones((h, *e.shape), F32)
    return jnp.exp(e * ld.reshape((h,) + (1,) * e.ndim))


def block(qf, kf, vf, s, ld, scale: float):
    """L rows (B, H, L, .) from the state s (B, H, Dk, Dv): (out (B, H, L, Dv), next state)."""
    h, n = qf.shape[1], qf.shape[2]
    local = np.arange(n)
    lower = local[:, None] >= local[None, :]  # (L, L): s <= t
    mask = jnp.where(lower, gamma_pow(ld, h, np.where(lower, local[:, None] - local, 0)), 0.0)
    scores = einsum("bhtk,bhsk->bhts", qf, kf) * mask  # D_ts = gamma^(t - s)
    out = einsum("bhts,bhsv->bhtv", scores, vf)
    out = out + gamma_pow(ld, h, local + 1)[..., None] * einsum("bhtk,bhkv->bhtv", qf, s)
    k_dec = kf * gamma_pow(ld, h, n - 1 - local)[..., None]  # gamma^(L-1-s) k_s
    s = gamma_pow(ld, h, np.array(n))[:, None, None] * s + einsum("bhsk,bhsv->bhkv", k_dec, vf)
    return out * scale, s


def chunked(qf, kf, vf, s, ld, scale: float, chunk: int):
    """lax.scan over the T // C full chunks, then the shorter last chunk."""
    b, h, t, dk = qf.shape
    full = (t // chunk) * chunk
    outs = []
    if full:
        def step(state, xs):
            o, state = block(*xs, state, ld, scale)
            return state, o

        def split(x):  # (B, H, T, D) -> (N, B, H, C, D); explicit sizes: B or H may be 0
            return jnp.moveaxis(x[:, :, :full].reshape(b, h, full // chunk, chunk, x.shape[3]),
                                2, 0)

        s, o = lax.scan(step, s, (split(qf), split(kf), split(vf)))
        outs.append(jnp.moveaxis(o, 0, 2).reshape(b, h, full, vf.shape[3]))
    if full < t or not outs:
        o, s = block(qf[:, :, full:], kf[:, :, full:], vf[:, :, full:], s, ld, scale)
        outs.append(o)
    return jnp.concatenate(outs, axis=2), s


def recurrent(qf, kf, vf, s, ld, scale: float):
    g = gamma_pow(ld, qf.shape[1], np.array(1))[:, None, None]  # (H, 1, 1)

    def step(state, xs):
        qt, kt, vt = xs  # (B, H, Dk), (B, H, Dk), (B, H, Dv)
        state = g * state + kt[..., :, None] * vt[..., None, :]
        return state, einsum("bhk,bhkv->bhv", qt, state) * scale

    s, o = lax.scan(step, s, tuple(jnp.moveaxis(x, 2, 0) for x in (qf, kf, vf)))
    return jnp.moveaxis(o, 0, 2).reshape(vf.shape), s


@functools.partial(jax.jit, static_argnames=("feature_map", "form", "chunk_size", "scale"))
def run(q, k, v, log_decay, initial_state, *, feature_map: str, form: str, chunk_size: int,
        scale: float):
    b, _, h, dk = q.shape
    qf, kf = (_phi(f32(x), feature_map).transpose(0, 2, 1, 3) for x in (q, k))  # (B, H, T, Dk)
    vf = f32(v).transpose(0, 2, 1, 3)
    s0 = (jnp.zeros((b, h, dk, v.shape[3]), F32) if initial_state is None
          else f32(initial_state))
    ld = None if log_decay is None else f32(lax.stop_gradient(log_decay))
    if form == "recurrent":
        out, s = recurrent(qf, kf, vf, s0, ld, scale)
    elif form == "chunked":
        out, s = chunked(qf, kf, vf, s0, ld, scale, chunk_size)
    else:
        out, s = block(qf, kf, vf, s0, ld, scale)
    return out.transpose(0, 2, 1, 3).astype(q.dtype), s


def validate_decay(log_decay) -> None:
    if log_decay is not None and log_decay.size and not is_tracer(log_decay):
        host = np.asarray(log_decay, np.float64)
        check_decay(float(host.max()), bool(np.isfinite(host).all()))


def linear_attention(q, k, v, log_decay=None, initial_state=None, *, feature_map="identity",
                     form="parallel", chunk_size=16, scale=None):
    check_args(q, k, v, log_decay, initial_state, feature_map=feature_map, form=form,
               chunk_size=chunk_size, scale=scale)
    validate_decay(log_decay)
    return run(q, k, v, log_decay, initial_state, feature_map=feature_map, form=form,
               chunk_size=int(chunk_size), scale=1.0 if scale is None else float(scale))
