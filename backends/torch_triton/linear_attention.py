"""Linear attention (Katharopoulos et al. 2020; RetNet, Sun et al. 2023) in torch: 3 forms.

Parallel (the masked decay product, one (T, T) matrix per head), chunked (the parallel form
inside a chunk, the state across chunks) and recurrent (a loop over T); gradients by autograd.
For CUDA tensors in float32/bfloat16/float16 the chunked form runs the Triton forward kernel
(``kernels/linear_attention.py``), whose backward is autograd over the torch chunked form.
Low precision computes in float32; out is rounded once, final_state stays float32.
"""

from __future__ import annotations

import torch

from lmspec.backends.torch_triton._dispatch import kernel_dtype, on_cuda
from lmspec.spec.linear_attention import check_args, check_decay


def linear_attention(q, k, v, log_decay=None, initial_state=None, *, feature_map="identity",
                     form="parallel", chunk_size=16, scale=None):
    return forward(q, k, v, log_decay, initial_state, feature_map, form, chunk_size, scale,
                   kernel=on_cuda(q, k, v))


def forward(q, k, v, log_decay, initial_state, feature_map: str, form: str, chunk_size: int,
            scale: float | None, *, kernel: bool):
    """Checks the arguments, then runs the Triton kernel (``kernel``, chunked form) or torch."""
    check_args(q, k, v, log_decay, initial_state, feature_map=feature_map, form=form,
               chunk_size=chunk_size, scale=scale)
    validate_decay(log_decay)
    scale = 1.0 if scale is None else float(scale)
    if kernel and form == "chunked" and kernel_dtype(q):
        from lmspec.backends.torch_triton.kernels.linear_attention import chunked_triton

        return chunked_triton(q, k, v, log_decay, initial_state, feature_map, int(chunk_size),
                              scale)
    qf, kf, vf, s0, ld = prepare(q, k, v, log_decay, initial_state, feature_map)
    if form == "recurrent":
        out, s = recurrent(qf, kf, vf, s0, ld, scale)
    elif form == "chunked":
        out, s = chunked(qf, kf, vf, s0, ld, scale, int(chunk_size))
    else:
        out, s = block(qf, kf, vf, s0, ld, scale)
    return out.transpose(1, 2).to(q.dtype), s  # (B, T, H, Dv), (B, H, Dk, Dv)


def validate_decay(log_decay) -> None:
    if log_decay is not None and log_decay.numel():
        ld = log_decay.detach()
        check_decay(float(ld.max()), bool(torch.isfinite(ld).all()))


def compute_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def phi(x: torch.Tensor, feature_map: str) -> torch.Tensor:
    if feature_map == "relu":
        return torch.relu(x)  # relu'(0) = 0
    if feature_map == "elu1":
        return torch.nn.functional.elu(x) + 1.0  # elu'(0) = exp(0) = 1 on torch's side
    return x


def prepare(q, k, v, log_decay, initial_state, feature_map: str):
    """Features in (B, H, T, D) and the compute dtype; the state (B, H, Dk, Dv) (zeros)."""
    compute = compute_dtype(q)
    qf, kf = (phi(x.to(compute), feature_map).transpose(1, 2) for x in (q, k))
    vf = v.to(compute).transpose(1, 2)
    b, _, h, dk = q.shape
    if initial_state is None:
        s0 = torch.zeros((b, h, dk, v.shape[3]), dtype=compute, device=q.device)
    else:
        s0 = initial_state.to(compute)
    ld = None if log_decay is None else log_decay.detach().to(compute)
    return qf, kf, vf, s0, ld


def gamma_pow(ld: torch.Tensor | None, h: int, e: torch.Tensor, like: torch.Tensor):
    """gamma_h ** e = exp(e * log_decay_h): (H, *e.shape); ones without decay."""
    e = e.to(like.dtype)
    if ld is None:
        return torch.ones((h, *e.shape), dtype=like.dtype, device=like.device)
    return torch.exp(e * ld.reshape((h,) + (1,) * e.dim()))


def block(qf, kf, vf, s, ld, scale: float):
    """L rows (B, H, L, .) from the state s: (out (B, H, L, Dv), next state)."""
    h, n = qf.shape[1], qf.shape[2]
    local = torch.arange(n, device=qf.device)
    lower = local[:, None] >= local[None, :]  # (L, L): s <= t
    mask = torch.where(lower, gamma_pow(ld, h, torch.where(lower, local[:, None] - local, 0),
                                        qf), 0.0)  # D_ts = gamma^(t - s)  (H, L, L)
    out = ((qf @ kf.transpose(-1, -2)) * mask) @ vf
    out = out + gamma_pow(ld, h, local + 1, qf)[..., None] * (qf @ s)  # the state, decayed
    k_dec = kf * gamma_pow(ld, h, n - 1 - local, qf)[..., None]  # gamma^(L-1-s) k_s
    s = gamma_pow(ld, h, torch.tensor(n), qf)[:, None, None] * s + k_dec.transpose(-1, -2) @ vf
    return out * scale, s


def chunked(qf, kf, vf, s, ld, scale: float, chunk_size: int):
    """Whole chunks batched: every chunk's intra-chunk term and its state contribution in one
    matmul each, then a loop over chunks that only carries the (B, H, Dk, Dv) state; a last
    partial chunk goes through ``block``."""
    b, h, t, dk = qf.shape
    n, L = t // chunk_size, chunk_size
    if n == 0:
        return block(qf, kf, vf, s, ld, scale)
    full = n * L
    q, k, v = (a[:, :, :full].reshape(b, h, n, L, a.shape[-1]) for a in (qf, kf, vf))
    local = torch.arange(L, device=qf.device)
    lower = local[:, None] >= local[None, :]  # (L, L): s <= t
    mask = torch.where(lower, gamma_pow(ld, h, torch.where(lower, local[:, None] - local, 0),
                                        qf), 0.0)[:, None]  # gamma^(t - s): (H, 1, L, L)
    intra = ((q @ k.transpose(-1, -2)) * mask) @ v  # (B, H, n, L, Dv)
    k_dec = k * gamma_pow(ld, h, L - 1 - local, qf)[:, None, :, None]  # gamma^(L-1-s) k_s
    contrib = k_dec.transpose(-1, -2) @ v  # (B, H, n, Dk, Dv): each chunk's own state
    g_chunk = gamma_pow(ld, h, torch.tensor(L), qf)[:, None, None]  # (H, 1, 1)
    before = []  # the state each chunk starts from
    for c in range(n):
        before.append(s)
        s = g_chunk * s + contrib[:, :, c]
    inter = q @ torch.stack(before, dim=2)  # (B, H, n, L, Dv)
    out = (intra + gamma_pow(ld, h, local + 1, qf)[:, None, :, None] * inter) * scale
    out = out.reshape(b, h, full, vf.shape[-1])
    if full == t:
        return out, s
    tail, s = block(qf[:, :, full:], kf[:, :, full:], vf[:, :, full:], s, ld, scale)
    return torch.cat((out, tail), dim=2), s


def recurrent(qf, kf, vf, s, ld, scale: float):
    h = qf.shape[1]
    g = gamma_pow(ld, h, torch.tensor(1), qf)[:, None, None]  # (H, 1, 1)
    outs = [vf[:, :, :0]]
    for t in range(qf.shape[2]):
        s = g * s + kf[:, :, t, :, None] * vf[:, :, t, None, :]  # (B, H, Dk, Dv)
        outs.append((qf[:, :, t, None] @ s) * scale)  # (B, H, 1, Dv)
    return torch.cat(outs, dim=2), s
