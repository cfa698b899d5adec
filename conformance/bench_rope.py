"""Benchmark of rope at (B, T, H, D) = (1, 4096, 32, 128): backends vs reference vs HF's
apply_rotary_pos_emb (cos/sin precomputed, as a model does once per forward)."""

from __future__ import annotations

import numpy as np
import pytest

from lmspec.conformance import _bench

SHAPES = [("T512", 1, 512, 8, 64)] if _bench.QUICK else [("T4096", 1, 4096, 32, 128)]


def _hf_rope(arrays):
    torch = pytest.importorskip("torch")
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    x = _bench.torch_from_numpy(arrays["x"]).float().transpose(1, 2).contiguous()  # (B, H, T, D)
    d = x.shape[-1]
    inv = 1.0 / 10000.0 ** (torch.arange(0, d, 2, device=x.device).float() / d)
    ang = _bench.torch_from_numpy(arrays["positions"]).float()[..., None] * inv  # (B, T, D/2)
    emb = torch.cat([ang, ang], -1)
    cos, sin = emb.cos(), emb.sin()
    return lambda: llama.apply_rotary_pos_emb(x, x, cos, sin)[0]


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("impl", _bench.impl_params({"peer:hf.apply_rotary_pos_emb": _hf_rope}))
def test_rope(benchmark, impl, shape):
    _, b, t, h, d = shape
    arrays = _bench.rng_arrays({"x": (b, t, h, d)})
    arrays["positions"] = np.broadcast_to(np.arange(t), (b, t)).astype(np.int64).copy()
    _bench.time_impl(benchmark, impl, "rope", arrays, {})
