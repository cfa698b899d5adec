"""Peak memory of the language-model head's loss and gradient: the (N, V) logits materialized
(``h @ W``, then cross-entropy and autograd, what a plain model does) against torch_triton's
fused head cross-entropy, which computes the loss and the gradients of h and W in row chunks
of at most 32 MiB of logits (Liger's fused linear cross-entropy, Hsu et al. 2024), over the
vocabulary size. Each measurement runs in a fresh process (see ``_bench.peak_growth``)."""

from __future__ import annotations

import pytest

from lmspec.conformance import _bench

VS = (4096, 8192) if _bench.QUICK else (32768, 131072)
N, D = (512, 64) if _bench.QUICK else (2048, 256)
SHAPES = [(f"V{v}", v) for v in VS]
KINDS = ("materialized/torch", "torch_triton")

_CHILD = r"""
import json, sys
import torch
torch.set_num_threads(2)
kind, v = sys.argv[1], int(sys.argv[2])
n, d = {n}, {d}
g = torch.Generator().manual_seed(0)
h = torch.randn(n, d, generator=g).requires_grad_(True)
w = (torch.randn(d, v, generator=g) / d ** 0.5).requires_grad_(True)
t = torch.randint(0, v, (n,), generator=g)
if kind == "materialized/torch":
    def call():  # the (N, V) logits, their softmax and their gradient in memory
        loss = torch.nn.functional.cross_entropy(h @ w, t)
        return torch.autograd.grad(loss, (h, w))
else:
    from lmspec.backends.torch_triton.model import _HeadCrossEntropy
    def call():  # the same mean loss: the fused sum over rows, / n
        loss = _HeadCrossEntropy.apply(h, w, t, 0.0) / n
        return torch.autograd.grad(loss, (h, w))
"""


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("kind", KINDS)
def test_head_ce_memory(benchmark, kind, shape):
    """Records the peak-memory growth as a metric; the timing of this test is not a result."""
    pytest.importorskip("torch")
    if kind == "torch_triton" and "torch_triton" not in {
            b.name for b in _bench.selected_backends()}:
        pytest.skip("torch_triton not selected")
    _, v = shape
    peak = _bench.peak_growth(_CHILD.format(n=N, d=D), kind, str(v))
    benchmark.extra_info["impl"] = kind
    benchmark.extra_info["metrics"] = {"peak_bytes": peak}
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
