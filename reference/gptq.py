"""GPTQ reference (Frantar et al., 2022), step for step as AutoGPTQ's ``fasterquant``, in float64.

The grid (scale, zero point, rounding) is quant_int4's; this module adds the Hessian, the
Cholesky factor of its inverse and the column loop with error feedback.
"""

from __future__ import annotations

import numpy as np

from lmspec.reference.quant_int4 import int4_round, int4_scales, int4_zero_quotient, int4_zeros
from lmspec.spec.gptq import check_args


def hessian(x) -> np.ndarray:
    """``H = 2 / n * x^T x`` (in, in)."""
    x = np.asarray(x, np.float64)
    return 2.0 / x.shape[0] * (x.T @ x)


def group_params(w_group) -> tuple[np.ndarray, np.ndarray]:
    """(scale float32 (out,), zero uint8 (out,)) of a group of columns, quant_int4's rule."""
    scale, lo = int4_scales(w_group, w_group.shape[1])
    return scale[:, 0], int4_zeros(int4_zero_quotient(lo, scale))[:, 0]


def act_order_perm(h) -> np.ndarray:
    """Columns by descending diag(H), ties by ascending index (a stable sort)."""
    return np.argsort(-np.diag(h), kind="stable")


def inverse_cholesky(h, damp: float) -> np.ndarray:
    """Upper U with ``(H + damp * mean(diag H) I)^-1 = U^T U``."""
    h = h + damp * np.mean(np.diag(h)) * np.eye(h.shape[0])
    hinv = np.linalg.inv(h)
    return np.linalg.cholesky(hinv).T  # lower L with L L^T = H^-1, so U = L^T


def gptq_trace(w, x, *, group_size=128, damp=0.01, block_size=128, act_order=False,
               static_groups=False):
    """``gptq``'s outputs plus the quotients ``v / scale`` that were rounded (out, in), in the
    original column order: where a backend's code differs, the conformance suite measures how
    close the reference's quotient was to a rounding boundary (the knife-edge rule)."""
    check_args(w, x, group_size=group_size, damp=damp, block_size=block_size,
               act_order=act_order, static_groups=static_groups)
    w = np.array(w, np.float64)  # (out, in), updated in place
    out, n_in = w.shape
    h = hessian(x)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    n_groups = n_in // group_size
    scales = np.zeros((out, n_groups), np.float32)
    zeros = np.zeros((out, n_groups), np.uint8)
    if static_groups:
        for g in range(n_groups):
            scales[:, g], zeros[:, g] = group_params(w[:, g * group_size:(g + 1) * group_size])
    perm = act_order_perm(h) if act_order else np.arange(n_in)
    w, h = w[:, perm], h[perm][:, perm]
    u = inverse_cholesky(h, damp)
    q = np.zeros((out, n_in), np.uint8)
    quot = np.zeros((out, n_in))
    for i1 in range(0, n_in, block_size):
        i2 = min(i1 + block_size, n_in)
        w1 = w[:, i1:i2].copy()  # the block, updated column by column
        err = np.zeros_like(w1)
        for i in range(i2 - i1):
            col = i1 + i
            if static_groups:
                g = perm[col] // group_size
            else:
                g = col // group_size
                if col % group_size == 0:  # from w as it stood at the start of the block
                    scales[:, g], zeros[:, g] = group_params(w[:, col:col + group_size])
            s, z = scales[:, g].astype(np.float64), zeros[:, g].astype(np.float64)
            quot[:, col] = w1[:, i] / s
            q[:, col] = int4_round(quot[:, col], z)
            e = (w1[:, i] - (q[:, col] - z) * s) / u[col, col]
            w1[:, i:] -= np.outer(e, u[col, i1 + i:i2])
            err[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err @ u[i1:i2, i2:]  # the lazy batch update
    inv = np.argsort(perm)
    return q[:, inv], scales, zeros, perm.astype(np.int64), quot[:, inv]


def gptq(w, x, *, group_size=128, damp=0.01, block_size=128, act_order=False,
         static_groups=False):
    return gptq_trace(w, x, group_size=group_size, damp=damp, block_size=block_size,
                      act_order=act_order, static_groups=static_groups)[:4]


def group_index(perm, group_size: int, *, act_order: bool, static_groups: bool) -> np.ndarray:
    """Group of each original column (GPTQ's g_idx)."""
    cols = np.argsort(perm) if act_order and not static_groups else np.arange(len(perm))
    return cols // group_size


def dequant_gptq(q, scales, zeros, perm, group_size: int, *, act_order: bool = False,
                 static_groups: bool = False) -> np.ndarray:
    """The quantized weight (out, in) in float64: ``(q - zero[g_idx]) * scale[g_idx]``."""
    g = group_index(perm, group_size, act_order=act_order, static_groups=static_groups)
    s, z = np.asarray(scales, np.float64)[:, g], np.asarray(zeros, np.float64)[:, g]
    return (np.asarray(q, np.float64) - z) * s
