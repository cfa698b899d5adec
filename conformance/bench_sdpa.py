"""Benchmark of sdpa: causal attention at realistic shapes, each backend against the reference
and against torch's F.scaled_dot_product_attention and jax.nn.dot_product_attention."""

from __future__ import annotations

import pytest

from lmspec.conformance import _bench

# (label, B, T, H, D): decoder prefill shapes; quick mode keeps the machinery honest in CI
SHAPES = [("T256", 1, 256, 8, 64)] if _bench.QUICK else [("T1024", 1, 1024, 8, 64)]
PARAMS = {"causal": True}


def _arrays(b, t, h, d):
    return _bench.rng_arrays({"q": (b, t, h, d), "k": (b, t, h, d), "v": (b, t, h, d)})


def _torch_sdpa(arrays):
    torch = pytest.importorskip("torch")
    q, k, v = (_bench.torch_from_numpy(arrays[n]).float().transpose(1, 2).contiguous()
               for n in "qkv")  # (B, H, T, D): torch's layout, prepared outside the timing
    return lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def _jax_dpa(arrays):
    jax = pytest.importorskip("jax")
    q, k, v = (jax.numpy.asarray(arrays[n], jax.numpy.float32) for n in "qkv")  # (B, T, H, D)
    fn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True))
    return lambda: _bench.sync(fn(q, k, v))


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("impl", _bench.impl_params({"peer:torch.sdpa": _torch_sdpa,
                                                     "peer:jax.nn.dpa": _jax_dpa}))
def test_sdpa(benchmark, impl, shape):
    label, *dims = shape
    arrays = {**_arrays(*dims), "segment_ids_q": None, "segment_ids_kv": None}
    _bench.time_impl(benchmark, impl, "sdpa", arrays, PARAMS)
