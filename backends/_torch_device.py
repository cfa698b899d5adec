"""Where the torch backends put their tensors: ``$LMSPEC_TORCH_DEVICE`` if set, else the GPU when
torch sees one (so that on a GPU machine the conformance suite and the benchmarks run the
Triton kernels, not the CPU fallbacks), else the CPU."""

from __future__ import annotations

import os
from functools import cache


@cache
def torch_device():
    import torch

    name = os.environ.get("LMSPEC_TORCH_DEVICE", "").strip()
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"LMSPEC_TORCH_DEVICE: expected a torch device such as 'cpu' or "
                         f"'cuda:0', got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"LMSPEC_TORCH_DEVICE: {name!r} asked for, but torch sees no CUDA "
                         "device")
    return device
