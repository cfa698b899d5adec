"""AWQ (Lin et al., 2023) in JAX, float64 under ``jax.enable_x64`` (llm-awq's scale search): the
whole grid is evaluated in one jitted vmap, each loss through the Gram matrix x^T x (equal to
mean((x d^T)^2) up to rounding); codes then match the float64 reference exactly,
except where two grid points' losses tie within rounding."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lmspec.backends.jax_xla.gptq import F64, QMAX, group_params
from lmspec.spec.awq import check_args


def fake_quant(w, s, group_size: int):
    """RTN of ``w * s`` on quant_int4's grid -> (q, scales, zeros, W_hat = dequant / s)."""
    out, n_in = w.shape
    ws = (w * s.astype(F64)).reshape(out * (n_in // group_size), group_size)  # row per group
    scales, zeros = group_params(ws)
    q = jnp.clip(jnp.round(ws / scales.astype(F64)[:, None]) + zeros[:, None], 0, QMAX)
    w_hat = ((q - zeros[:, None]) * scales.astype(F64)[:, None]).reshape(out, n_in) / s
    return q.reshape(out, n_in), scales.reshape(out, -1), zeros.reshape(out, -1), w_hat


def candidate_scales(x_mean, alpha):
    s = jnp.maximum(x_mean**alpha, 1e-4)
    return (s / jnp.sqrt(s.max() * s.min())).astype(jnp.float32)


def awq(w, x, *, group_size: int = 128, n_grid: int = 20):
    check_args(w, x, group_size=group_size, n_grid=n_grid)
    with jax.enable_x64(True):
        xf = jnp.asarray(x, F64)
        # outside the jit (one compile per n): the loss through the Gram matrix x^T x
        x_mean, gram = jnp.abs(xf).mean(axis=0), xf.T @ xf  # (in,), (in, in)
        return _awq(jnp.asarray(w, F64), x_mean, gram, xf.shape[0], group_size=group_size,
                    n_grid=n_grid)


@functools.partial(jax.jit, static_argnames=("group_size", "n_grid"))
def _awq(w, x_mean, gram, n, *, group_size, n_grid):
    def loss(alpha):
        d = w - fake_quant(w, candidate_scales(x_mean, alpha), group_size)[3]  # (out, in)
        return jnp.sum((d @ gram) * d) / (n * w.shape[0])  # mean((x d^T)^2)

    alphas = jnp.arange(n_grid, dtype=F64) / n_grid
    best = jnp.argmin(jax.vmap(loss)(alphas))  # the first of equal minima
    s = candidate_scales(x_mean, alphas[best])
    q, scales, zeros, _ = fake_quant(w, s, group_size)
    return q.astype(jnp.uint8), scales, zeros.astype(jnp.uint8), s
