"""Cross-entropy with ignore index, label smoothing and PaLM's z-loss; Triton kernel on CUDA."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmspec.backends.torch_triton._dispatch import kernel_dtype, on_cuda
from lmspec.spec.cross_entropy import IGNORE_INDEX, check_args, check_targets


def cross_entropy(logits, targets, *, ignore_index: int = IGNORE_INDEX,
                  label_smoothing: float = 0.0, z_loss: float = 0.0):
    return forward(logits, targets, ignore_index, label_smoothing, z_loss,
                   kernel=on_cuda(logits, targets))


def forward(logits, targets, ignore_index: int, label_smoothing: float, z_loss: float, *,
            kernel: bool):
    """Checks the arguments, then runs the Triton kernel (``kernel``) or the torch path."""
    check_args(logits, targets, ignore_index=ignore_index, label_smoothing=label_smoothing,
               z_loss=z_loss)
    check_targets(targets.detach().cpu().numpy(), logits.shape[-1], ignore_index)
    v = logits.shape[-1]
    flat, t = logits.reshape(-1, v), targets.reshape(-1).long()  # (N, V), (N,)
    if kernel and kernel_dtype(logits):
        from lmspec.backends.torch_triton.kernels.cross_entropy import (
            cross_entropy as cross_entropy_triton,
        )

        return cross_entropy_triton(flat, t, ignore_index, label_smoothing, z_loss)
    return _cross_entropy_torch(flat, t, ignore_index, label_smoothing, z_loss)


def _cross_entropy_torch(logits, t, ignore_index: int, label_smoothing: float, z_loss: float):
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()  # torch's CPU log-softmax would round every log-prob
    valid = t != ignore_index  # (N,)
    n = valid.sum().clamp(min=1)
    loss = F.cross_entropy(logits, t, ignore_index=ignore_index, reduction="sum",
                           label_smoothing=label_smoothing)
    if z_loss > 0.0:
        lse = torch.logsumexp(logits, dim=-1)  # (N,)
        loss = loss + z_loss * torch.where(valid, lse * lse, 0.0).sum()
    return loss / n
