"""Benchmark of cross_entropy at (tokens, vocab) = (2048, 32000): backends vs reference vs
torch.nn.functional.cross_entropy and a jitted jnp expression."""

from __future__ import annotations

import numpy as np
import pytest

from lmspec.conformance import _bench

SHAPES = [("256x4096", 256, 4096)] if _bench.QUICK else [("2048x32000", 2048, 32000)]


def _data(n, v):
    arrays = _bench.rng_arrays({"logits": (n, v)})
    arrays["targets"] = np.random.default_rng(1).integers(0, v, n).astype(np.int64)
    return arrays


def _torch_ce(arrays):
    torch = pytest.importorskip("torch")
    logits = _bench.torch_from_numpy(arrays["logits"]).float()
    t = _bench.torch_from_numpy(arrays["targets"])
    return lambda: torch.nn.functional.cross_entropy(logits, t)


def _jnp_ce(arrays):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    logits = jnp.asarray(arrays["logits"], jnp.float32)
    t = jnp.asarray(arrays["targets"], jnp.int32)

    def ce(x, t):
        logp = jax.nn.log_softmax(x, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, t[:, None], axis=-1))

    fn = jax.jit(ce)
    return lambda: _bench.sync(fn(logits, t))


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("impl", _bench.impl_params({"peer:F.cross_entropy": _torch_ce,
                                                     "peer:jnp": _jnp_ce}))
def test_cross_entropy(benchmark, impl, shape):
    _, n, v = shape
    arrays = _data(n, v)
    _bench.time_impl(benchmark, impl, "cross_entropy", arrays, {})
