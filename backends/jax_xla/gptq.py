"""GPTQ (Frantar et al., 2022) in JAX, float64 under ``jax.enable_x64``: the codes then match the
float64 reference exactly, except at knife edges.

One jitted ``lax.fori_loop`` over the columns (in processing order) with eager error feedback
(every later column is updated after each column): the same numbers as AutoGPTQ's lazy batch
updates up to float64 rounding order. Block structure survives only where the spec needs it:
a group's scale and zero are computed from a snapshot of w taken at the start of each block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from lmspec.spec.gptq import check_args

F64 = jnp.float64
QMAX = 15


def group_params(wg: jax.Array) -> tuple[jax.Array, jax.Array]:
    """quant_int4's grid for a group of columns (out, g): scale float32, zero float64."""
    lo = jnp.minimum(wg.min(axis=1), 0.0)
    hi = jnp.maximum(wg.max(axis=1), 0.0)
    s = ((hi - lo) / QMAX).astype(jnp.float32)
    degenerate = s == 0  # all-zero group: GPTQ's [-1, 1]
    lo = jnp.where(degenerate, -1.0, lo)
    s = jnp.where(degenerate, jnp.float32(2.0 / QMAX), s)
    return s, jnp.clip(jnp.round(-lo / s.astype(F64)), 0, QMAX)


def _inverse_cholesky(h, damp: float):
    """Upper U with (H + damp mean(diag H) I)^-1 = U^T U."""
    h = h + damp * jnp.mean(jnp.diag(h)) * jnp.eye(h.shape[0], dtype=h.dtype)
    lo = jnp.linalg.cholesky(h)
    linv = jax.scipy.linalg.solve_triangular(lo, jnp.eye(h.shape[0], dtype=h.dtype), lower=True)
    return jnp.linalg.cholesky(linv.T @ linv).T


def gptq(w, x, *, group_size: int = 128, damp: float = 0.01, block_size: int = 128,
         act_order: bool = False, static_groups: bool = False):
    check_args(w, x, group_size=group_size, damp=damp, block_size=block_size,
               act_order=act_order, static_groups=static_groups)
    with jax.enable_x64(True):
        xf = jnp.asarray(x, F64)
        h = 2.0 / xf.shape[0] * (xf.T @ xf)  # (in, in), outside the jit: one compile per n
        return _gptq(jnp.asarray(w, F64), h, jnp.float64(damp), jnp.int32(block_size),
                     jnp.bool_(act_order), jnp.bool_(static_groups), group_size=group_size)


@functools.partial(jax.jit, static_argnames=("group_size",))
def _gptq(w, h, damp, block_size, act_order, static_groups, *, group_size):
    """Every option but group_size is traced: one compile per (out, in, group_size)."""
    out, n_in = w.shape
    n_groups = n_in // group_size
    dead = jnp.diag(h) == 0
    h = jnp.where(jnp.diag(dead), 1.0, h)
    w = jnp.where(dead[None, :], 0.0, w)
    static = [group_params(w[:, g * group_size:(g + 1) * group_size]) for g in range(n_groups)]
    scales = jnp.stack([s for s, _ in static], axis=1)  # (out, G); replaced unless static
    zeros = jnp.stack([z for _, z in static], axis=1)
    perm = jnp.where(act_order, jnp.argsort(-jnp.diag(h), stable=True), jnp.arange(n_in))
    w, h = w[:, perm], h[perm][:, perm]
    u = _inverse_cholesky(h, damp)
    cols = jnp.arange(n_in)

    def step(col, state):
        w, snap, q, scales, zeros = state
        snap = jnp.where(col % block_size == 0, w, snap)  # w at the start of the block
        g = jnp.where(static_groups, perm[col] // group_size, col // group_size)
        s_new, z_new = group_params(lax.dynamic_slice_in_dim(snap, col, group_size, 1))
        start = (col % group_size == 0) & ~static_groups
        scales = scales.at[:, g].set(jnp.where(start, s_new, scales[:, g]))
        zeros = zeros.at[:, g].set(jnp.where(start, z_new, zeros[:, g]))
        s, z = scales[:, g].astype(F64), zeros[:, g]
        v = w[:, col]
        qc = jnp.clip(jnp.round(v / s) + z, 0, QMAX)  # jnp.round is half-to-even
        e = (v - (qc - z) * s) / u[col, col]
        w = w - jnp.outer(e, jnp.where(cols > col, u[col], 0.0))
        return w, snap, q.at[:, col].set(qc), scales, zeros

    state = (w, w, jnp.zeros((out, n_in), F64), scales, zeros)
    _, _, q, scales, zeros = lax.fori_loop(0, n_in, step, state)
    q = q[:, jnp.argsort(perm)]
    return q.astype(jnp.uint8), scales, zeros.astype(jnp.uint8), perm.astype(jnp.int64)
