"""The backend protocol's plumbing for torch: NumPy conversion and the generic autograd VJP."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import ml_dtypes
import numpy as np
import torch

from lmspec.backends import numpy_dtype
from lmspec.backends._torch_device import torch_device

TORCH_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def asarray(a: np.ndarray, dtype: str | None) -> torch.Tensor:
    """NumPy to torch on the backend's device (``lmspec.backends._torch_device``); floats are
    rounded by NumPy/ml_dtypes (one rounding, as the harness)."""
    return host_tensor(a, dtype).to(torch_device())


def host_tensor(a: np.ndarray, dtype: str | None) -> torch.Tensor:
    """NumPy to a torch tensor on the CPU, rounded as ``asarray`` says."""
    a = np.asarray(a)
    if dtype is None:
        kind = a.dtype.kind
        return torch.from_numpy(np.array(a, dtype=np.int64 if kind in "iub" else a.dtype))
    rounded = a.astype(numpy_dtype(dtype))
    if dtype == "bfloat16":
        # bfloat16 -> float32 is exact, and float32 -> bfloat16 of a representable value too
        return torch.from_numpy(rounded.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(rounded))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(ml_dtypes.bfloat16)  # exact
    return t.numpy()


def _leaf(t: torch.Tensor | None, differentiable: bool) -> torch.Tensor | None:
    if t is None or not differentiable:
        return t
    return t.detach().clone().requires_grad_(True)


def vjp(fn: Callable, arrays: Mapping[str, torch.Tensor | None], params: Mapping[str, object],
        cotangents: tuple, wrt: tuple[str, ...]) -> dict[str, torch.Tensor | None]:
    """Gradients of ``fn`` by torch.autograd; an input unreached by the outputs gets zeros."""
    inputs = {name: _leaf(a, name in wrt) for name, a in arrays.items()}
    with torch.enable_grad():
        out = fn(**inputs, **params)
    outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    pairs = [(o, torch.as_tensor(ct).to(device=o.device, dtype=o.dtype))
             for o, ct in zip(outs, cotangents, strict=True)
             if ct is not None and o.requires_grad]
    names = [n for n in wrt if inputs.get(n) is not None]
    grads: tuple = (None,) * len(names)
    if pairs and names:
        grads = torch.autograd.grad([o for o, _ in pairs], [inputs[n] for n in names],
                                    grad_outputs=[ct for _, ct in pairs], allow_unused=True)
    result: dict[str, torch.Tensor | None] = {n: None for n in wrt}
    for n, g in zip(names, grads, strict=True):
        result[n] = torch.zeros_like(inputs[n]) if g is None else g.detach()
    return result
