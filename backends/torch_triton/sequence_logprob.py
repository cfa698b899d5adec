"""Sequence log-prob in torch: float32 (or wider) log-softmax, gathered and masked."""

from __future__ import annotations

import torch

from lmspec.spec.sequence_logprob import check_args, check_values


def sequence_logprob(logits, targets, mask):
    check_args(logits, targets, mask)
    check_values(targets.detach().cpu().numpy(), mask.detach().cpu().numpy(), logits.shape[-1])
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    m = mask.to(torch.int64) == 1  # (B, T)
    t = torch.where(m, targets.long(), 0)  # masked targets are never read
    logp = torch.log_softmax(logits.to(compute), dim=-1)  # (B, T, V)
    picked = logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return torch.where(m, picked, 0.0).sum(-1), m.sum(-1).to(compute)
