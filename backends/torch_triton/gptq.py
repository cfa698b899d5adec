"""GPTQ (Frantar et al., 2022) in torch, float64 throughout (AutoGPTQ's ``fasterquant``): the
codes then match the float64 reference exactly, except at knife edges."""

from __future__ import annotations

import torch

from lmspec.spec.gptq import check_args

F64 = torch.float64
QMAX = 15


def group_params(wg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quant_int4's grid for a group of columns (out, g): scale float32, zero (float64)."""
    lo = wg.amin(dim=1).clamp(max=0) if wg.shape[1] else wg.new_zeros(wg.shape[0])
    hi = wg.amax(dim=1).clamp(min=0) if wg.shape[1] else wg.new_zeros(wg.shape[0])
    s = ((hi - lo) / QMAX).to(torch.float32)
    degenerate = s == 0  # all-zero group: GPTQ's [-1, 1]
    lo = torch.where(degenerate, -1.0, lo)
    s = torch.where(degenerate, torch.full_like(s, 2.0 / QMAX), s)
    return s, torch.round(-lo / s.to(F64)).clamp(0, QMAX)


def codes(v: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """clip(rne(v / scale) + zero, 0, 15) as float64 (torch.round is half-to-even)."""
    return (torch.round(v / s.to(F64)) + z).clamp(0, QMAX)


def gptq(w, x, *, group_size: int = 128, damp: float = 0.01, block_size: int = 128,
         act_order: bool = False, static_groups: bool = False):
    check_args(w, x, group_size=group_size, damp=damp, block_size=block_size,
               act_order=act_order, static_groups=static_groups)
    w = w.detach().to(F64).clone()  # (out, in)
    xf = x.detach().to(F64)
    out, n_in = w.shape
    h = 2.0 / xf.shape[0] * (xf.T @ xf)  # (in, in)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    n_groups = n_in // group_size
    dev = w.device
    scales = torch.zeros((out, n_groups), dtype=torch.float32, device=dev)
    zeros = torch.zeros((out, n_groups), dtype=F64, device=dev)
    if static_groups:
        for g in range(n_groups):
            scales[:, g], zeros[:, g] = group_params(w[:, g * group_size:(g + 1) * group_size])
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True, stable=True)
    else:
        perm = torch.arange(n_in, device=dev)
    w, h = w[:, perm], h[perm][:, perm]
    h += damp * torch.mean(torch.diag(h)) * torch.eye(n_in, dtype=F64, device=dev)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros((out, n_in), dtype=F64, device=dev)
    for i1 in range(0, n_in, block_size):
        i2 = min(i1 + block_size, n_in)
        w1 = w[:, i1:i2].clone()
        err = torch.zeros_like(w1)
        for i in range(i2 - i1):
            col = i1 + i
            if static_groups:
                g = int(perm[col]) // group_size
            else:
                g = col // group_size
                if col % group_size == 0:  # from w as it stood at the start of the block
                    scales[:, g], zeros[:, g] = group_params(w[:, col:col + group_size])
            s, z = scales[:, g].to(F64), zeros[:, g]
            q[:, col] = codes(w1[:, i], s, z)
            e = (w1[:, i] - (q[:, col] - z) * s) / u[col, col]
            w1[:, i:] -= torch.outer(e, u[col, col:i2])
            err[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err @ u[i1:i2, i2:]  # the lazy batch update
    q = q[:, torch.argsort(perm)]
    return q.to(torch.uint8), scales, zeros.to(torch.uint8), perm.to(torch.int64)
