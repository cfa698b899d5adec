"""Rejection sampler in jitted JAX, batched without a loop over requests or drafts: accept mask,
leading-accept count by cumprod, final token by an inverse CDF over the row at the stop.

Shapes are bucketed to powers of two before the jitted step (B to >= 8, gamma to >= 1, V to
>= 8), so that a serving loop (or a test) does not recompile for every batch: extra requests
have length 0, extra drafts are padding (never read), extra tokens have mass 0 (never picked,
and C_j unchanged); the outputs are sliced back. This is exact by the spec's padding rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lmspec.backends.jax_xla._common import F32, is_tracer
from lmspec.spec.rejection_sample import check_args, check_values


def _pick(w: jax.Array, r: jax.Array) -> jax.Array:
    """(B,) min { j : r S < C_j } per row of w (B, V); the last j with w_j > 0 if none."""
    c = jnp.cumsum(w, axis=-1)  # (B, V)
    t = jnp.sum(c <= (r * c[:, -1])[:, None], axis=-1)  # how many C_j <= r S
    v = w.shape[-1]
    last = v - 1 - jnp.argmax(jnp.flip(w > 0, axis=-1), axis=-1)
    return jnp.where(t < v, t, last)


@jax.jit
def _sample(x, q, p, u, r, lengths, pad_id):
    q, p, u, r = (a.astype(F32) for a in (q, p, u, r))  # (B, G, V), (B, G + 1, V), (B, G), (B,)
    b, g, v = q.shape
    pos = jnp.arange(g)
    xs = jnp.clip(x, 0, v - 1)[..., None]  # padding may hold any id; it is masked below
    q_x = jnp.take_along_axis(q, xs, axis=2)[..., 0]  # (B, G)
    p_x = jnp.take_along_axis(p[:, :g], xs, axis=2)[..., 0]
    accept = (u * q_x < p_x) & (pos[None, :] < lengths[:, None])
    n = jnp.sum(jnp.cumprod(accept.astype(jnp.int32), axis=1), axis=1)  # (B,) leading accepts
    rows = jnp.arange(b)
    p_n = p[rows, n]  # (B, V)
    q_n = q[rows, jnp.minimum(n, max(g - 1, 0))] if g > 0 else jnp.zeros_like(p_n)
    resid = jnp.maximum(p_n - q_n, 0.0)
    use_resid = (n < lengths) & jnp.any(p_n > q_n, axis=-1)
    t = _pick(jnp.where(use_resid[:, None], resid, p_n), r)
    slot = jnp.arange(g + 1)[None, :]
    drafts = jnp.concatenate([x, jnp.zeros((b, 1), x.dtype)], axis=1)
    tokens = jnp.where(slot < n[:, None], drafts,
                       jnp.where(slot == n[:, None], t[:, None], pad_id))
    return n, tokens.astype(jnp.int32)


def rejection_sample(draft_tokens, draft_probs, target_probs, uniforms, resample_uniforms,
                     lengths=None, *, pad_id: int = -1):
    check_args(draft_tokens, draft_probs, target_probs, uniforms, resample_uniforms, lengths,
               pad_id=pad_id)
    b, g, v = draft_probs.shape
    if lengths is None:
        lengths = jnp.full((b,), g, jnp.int32)
    arrays = (draft_tokens, draft_probs, target_probs, uniforms, resample_uniforms, lengths)
    pad = jnp.asarray(pad_id, jnp.int32)
    if any(is_tracer(a) for a in arrays):  # inside a user's jit: no host checks, no buckets
        return _sample(*arrays, pad)
    host = [np.asarray(a) for a in arrays]
    check_values(*host)
    big = (_bucket(b, 8), _bucket(g, 1), _bucket(v, 8))
    shapes = (big[:2], big, (big[0], big[1] + 1, big[2]), big[:2], big[:1], big[:1])
    n, tokens = _sample(*(jnp.asarray(_padded(a, s)) for a, s in zip(host, shapes)), pad)
    return n[:b], tokens[:b, : g + 1]


def _bucket(n: int, least: int) -> int:
    """The power of two at or above n, at least ``least``."""
    return max(least, 1 << max(n - 1, 0).bit_length())


def _padded(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``a`` in the top-left corner of zeros of ``shape`` (its dtype kept; int32 for ints)."""
    out = np.zeros(shape, np.int32 if a.dtype.kind in "iu" else a.dtype)
    out[tuple(slice(0, k) for k in a.shape)] = a
    return out
