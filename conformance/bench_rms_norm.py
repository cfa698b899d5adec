"""Benchmark of rms_norm at (tokens, hidden) = (4096, 4096): backends vs reference vs
torch.nn.functional.rms_norm and a jitted jnp expression."""

from __future__ import annotations

import pytest

from lmspec.conformance import _bench

SHAPES = [("256x1024", 256, 1024)] if _bench.QUICK else [("4096x4096", 4096, 4096)]
EPS = 1e-6


def _torch_rms(arrays):
    torch = pytest.importorskip("torch")
    x = _bench.torch_from_numpy(arrays["x"]).float()
    w = _bench.torch_from_numpy(arrays["weight"]).float()
    return lambda: torch.nn.functional.rms_norm(x, (x.shape[-1],), w, EPS)


def _jnp_rms(arrays):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, w = jnp.asarray(arrays["x"], jnp.float32), jnp.asarray(arrays["weight"], jnp.float32)
    fn = jax.jit(lambda x, w: x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + EPS) * w)
    return lambda: _bench.sync(fn(x, w))


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("impl", _bench.impl_params({"peer:F.rms_norm": _torch_rms,
                                                     "peer:jnp": _jnp_rms}))
def test_rms_norm(benchmark, impl, shape):
    _, n, d = shape
    arrays = _bench.rng_arrays({"x": (n, d), "weight": (d,)})
    _bench.time_impl(benchmark, impl, "rms_norm", arrays, {"eps": EPS})
