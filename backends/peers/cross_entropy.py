"""Cross-entropy via torch.nn.functional.cross_entropy, plus PaLM's z-loss from torch.logsumexp."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmspec.spec.cross_entropy import IGNORE_INDEX, check_args, check_targets


def cross_entropy(logits, targets, *, ignore_index: int = IGNORE_INDEX,
                  label_smoothing: float = 0.0, z_loss: float = 0.0):
    check_args(logits, targets, ignore_index=ignore_index, label_smoothing=label_smoothing,
               z_loss=z_loss)
    v = logits.shape[-1]
    check_targets(targets.detach().cpu().numpy(), v, ignore_index)
    # adapter: logits upcast to float32 first, as HF's ForCausalLMLoss does
    x = logits.reshape(-1, v).float()  # (N, V)
    t = targets.reshape(-1)  # (N,)
    valid = t != ignore_index
    # adapter: "sum" / max(n, 1) instead of "mean": torch's mean is NaN when all are ignored
    n = valid.sum().clamp(min=1).to(torch.float32)
    loss = F.cross_entropy(x, t, ignore_index=ignore_index, reduction="sum",
                           label_smoothing=label_smoothing)
    if z_loss:
        # adapter: torch has no z-loss; PaLM's z * lse**2 over the valid rows
        lse = torch.logsumexp(x, dim=-1)  # (N,)
        loss = loss + z_loss * torch.where(valid, lse * lse, 0.0).sum()
    return loss / n
