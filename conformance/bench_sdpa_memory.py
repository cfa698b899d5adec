"""Peak memory of causal attention (FlashAttention, Dao et al. 2022): a materialized (T, T)
score matrix against the tiled kernels, over sequence length. Each measurement runs in a fresh
process (Linux): after a warm-up call, the peak resident set (VmHWM) is reset and the growth of
the peak over one more call is recorded, so inputs, imports and compilation are excluded."""

from __future__ import annotations

import pytest

from lmspec.conformance import _bench

TS = (256, 512) if _bench.QUICK else (1024, 2048, 4096)
B, H, D = 1, 8, 64
SHAPES = [(f"T{t}", t) for t in TS]

_CHILD = r"""
import json, sys
import numpy as np
kind, t = sys.argv[1], int(sys.argv[2])
b, h, d = {b}, {h}, {d}
rng = np.random.default_rng(0)
arrays = [rng.standard_normal((b, t, h, d), dtype=np.float32) for _ in range(3)]
if kind == "jax_xla":
    from lmspec.backends import load
    backend = load("jax_xla")
    q, k, v = (backend.asarray(a, "float32") for a in arrays)
    def call(q=q, k=k, v=v):
        return [o.block_until_ready() for o in backend.fn("sdpa")(q, k, v, causal=True)]
else:
    import torch
    torch.set_num_threads(2)
    q, k, v = (torch.from_numpy(a) for a in arrays)
    if kind == "materialized/torch":
        def call():  # softmax(q k^T / sqrt(d)) v with the (B, H, T, T) scores in memory
            qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
            s = (qh @ kh.transpose(-1, -2)) / d ** 0.5
            s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
            return torch.softmax(s, dim=-1) @ vh
    elif kind == "peer:torch.sdpa":
        qh, kh, vh = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        def call():
            return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
    else:
        from lmspec.backends import load
        sdpa = load(kind).fn("sdpa")
        def call():
            return sdpa(q, k, v, causal=True)
"""


def _measure(kind: str, t: int) -> int:
    return _bench.peak_growth(_CHILD.format(b=B, h=H, d=D), kind, str(t))


def _kinds() -> list[str]:
    names = {b.name for b in _bench.selected_backends()}
    kinds = ["materialized/torch", "peer:torch.sdpa"]
    return kinds + [n for n in ("torch_triton", "jax_xla") if n in names]


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("kind", _kinds())
def test_sdpa_memory(benchmark, kind, shape):
    """Records the peak-memory growth as a metric; the timing of this test is not a result."""
    pytest.importorskip("torch")
    _, t = shape
    peak = _measure(kind, t)
    benchmark.extra_info["impl"] = kind
    benchmark.extra_info["metrics"] = {"peak_bytes": peak}
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
