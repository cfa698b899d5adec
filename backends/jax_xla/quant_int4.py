"""Group-wise asymmetric INT4 RTN (GPTQ's grid) in jitted JAX, packed two codes per byte."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lmspec.backends.jax_xla._quant import F32, div, pack_nibbles
from lmspec.spec.quant_int4 import QMAX, check_args


@functools.partial(jax.jit, static_argnames=("group_size",))
def _quant_int4(w, *, group_size: int):
    out, n = w.shape
    g = w.astype(F32).reshape(out, n // group_size, group_size)  # (out, G, g)
    lo = jnp.min(g, axis=-1, initial=0.0)  # the range holds 0
    hi = jnp.max(g, axis=-1, initial=0.0)
    scales = div(hi - lo, QMAX)
    degenerate = scales == 0  # all-zero group: GPTQ's [-1, 1]
    lo = jnp.where(degenerate, -1.0, lo)
    scales = jnp.where(degenerate, jnp.asarray(2.0 / QMAX, F32), scales)
    zeros = jnp.clip(jnp.round(div(-lo, scales)), 0, QMAX)
    q = jnp.clip(jnp.round(div(g, scales[..., None])) + zeros[..., None], 0, QMAX)
    return pack_nibbles(q.astype(jnp.uint8).reshape(out, n)), scales, zeros.astype(jnp.uint8)


def quant_int4(w, *, group_size: int = 128):
    check_args(w, group_size=group_size)
    return _quant_int4(w, group_size=int(group_size))
