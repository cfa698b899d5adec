"""Rejection sampler in torch, batched without a loop over requests or drafts: accept mask,
leading-accept count by cumprod, final token by an inverse CDF over the row at the stop."""

from __future__ import annotations

import torch

from lmspec.spec.rejection_sample import check_args, check_values


def _host(t: torch.Tensor | None):
    if t is None:
        return None
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()  # bfloat16 -> float32: exact


def _pick(w: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(B,) min { j : r S < C_j } per row of w (B, V); the last j with w_j > 0 if none."""
    c = torch.cumsum(w, dim=-1)  # (B, V)
    t = (c <= (r * c[:, -1])[:, None]).sum(-1)  # how many C_j <= r S: the first j above it
    v = w.shape[-1]
    last = v - 1 - torch.flip(w > 0, dims=(-1,)).int().argmax(-1)
    return torch.where(t < v, t, last)


def rejection_sample(draft_tokens, draft_probs, target_probs, uniforms, resample_uniforms,
                     lengths=None, *, pad_id: int = -1):
    check_args(draft_tokens, draft_probs, target_probs, uniforms, resample_uniforms, lengths,
               pad_id=pad_id)
    check_values(*(_host(t) for t in (draft_tokens, draft_probs, target_probs, uniforms,
                                      resample_uniforms, lengths)))
    floats = (draft_probs, target_probs, uniforms, resample_uniforms)
    compute = torch.float64 if any(t.dtype == torch.float64 for t in floats) else torch.float32
    q, p, u, r = (t.to(compute) for t in floats)  # (B, G, V), (B, G + 1, V), (B, G), (B,)
    b, g, v = q.shape
    dev = q.device
    x = draft_tokens.long().to(dev)
    L = torch.full((b,), g, dtype=torch.long, device=dev) if lengths is None else (
        lengths.long().to(dev))
    pos = torch.arange(g, device=dev)
    xs = x.clamp(0, v - 1)[..., None]  # padding may hold any id; it is masked below
    q_x = q.gather(2, xs)[..., 0]  # (B, G)
    p_x = p[:, :g].gather(2, xs)[..., 0]
    accept = (u * q_x < p_x) & (pos[None, :] < L[:, None])
    n = accept.long().cumprod(dim=1).sum(dim=1)  # (B,) leading accepts
    rows = torch.arange(b, device=dev)
    p_n = p[rows, n]  # (B, V)
    q_n = q[rows, n.clamp(max=max(g - 1, 0))] if g > 0 else torch.zeros_like(p_n)
    resid = torch.clamp(p_n - q_n, min=0)
    use_resid = (n < L) & (p_n > q_n).any(-1)
    t = _pick(torch.where(use_resid[:, None], resid, p_n), r)
    slot = torch.arange(g + 1, device=dev)[None, :]
    drafts = torch.cat([x, torch.zeros((b, 1), dtype=torch.long, device=dev)], dim=1)
    tokens = torch.where(slot < n[:, None], drafts,
                         torch.where(slot == n[:, None], t[:, None], torch.full_like(drafts,
                                                                                     pad_id)))
    return n, tokens
