"""Benchmark of linear attention (Katharopoulos et al. 2020; RetNet, Sun et al. 2023) against
causal softmax attention (sdpa) over sequence length: where the linear forms overtake."""

from __future__ import annotations

import numpy as np
import pytest

from lmspec.conformance import _bench

# (label, B, T, H, D): the label carries T so that ratios compare like with like
TS = (128, 256) if _bench.QUICK else (512, 1024, 2048, 4096, 8192, 16384)
SHAPES = [(f"T{t}", 1, t, 8, 64) for t in TS]
REFERENCE_MAX_T = 1024  # the NumPy reference (float64) is too slow above this: not timed
# the parallel form holds a few (B, H, T, T) float32 matrices (scores, decay mask, product)
PARALLEL_MAX_BYTES = 3 * 2**30
CHUNK = 64  # flash-linear-attention's usual chunk; the spec's default (16) is for tests
# impl label -> (stem, params); every label is "<what>/<backend>" except the baselines
OPS = {"sdpa": ("sdpa", {"causal": True}),
       "chunked": ("linear_attention", {"form": "chunked", "chunk_size": CHUNK}),
       "parallel": ("linear_attention", {"form": "parallel"})}


def _arrays(stem: str, b: int, t: int, h: int, d: int) -> dict:
    arrays = _bench.rng_arrays({"q": (b, t, h, d), "k": (b, t, h, d), "v": (b, t, h, d)})
    if stem == "sdpa":
        return {**arrays, "segment_ids_q": None, "segment_ids_kv": None}
    # RetNet's per-head decay, log(1 - 2^(-5 - h)); q, k scaled so the state stays O(1)
    ld = np.log1p(-(2.0 ** (-5.0 - np.arange(h, dtype=np.float64))))
    return {**arrays, "q": arrays["q"] / d, "log_decay": ld, "initial_state": None}


def _torch_sdpa(b, t, h, d):
    torch = pytest.importorskip("torch")
    arrays = _arrays("sdpa", b, t, h, d)
    q, k, v = (_bench.torch_from_numpy(arrays[n]).float().transpose(1, 2).contiguous()
               for n in "qkv")  # (B, H, T, D): torch's layout, prepared outside the timing
    return lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def _jax_dpa(b, t, h, d):
    jax = pytest.importorskip("jax")
    arrays = _arrays("sdpa", b, t, h, d)
    q, k, v = (jax.numpy.asarray(arrays[n], jax.numpy.float32) for n in "qkv")  # (B, T, H, D)
    fn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True))
    return lambda: _bench.sync(fn(q, k, v))


def _impls() -> list:
    """Every (op, backend) pair, the reference's sdpa and the torch peer. The baselines
    ("reference", "peer:") are all softmax attention, so every speedup row reads "x times as
    fast as softmax attention by <baseline>"."""
    params = []
    for b in _bench.selected_backends():
        if b.name == "reference":
            params.append(pytest.param(("backend", "sdpa", b), id="reference"))
            continue
        params += [pytest.param(("backend", op, b), id=f"{op}/{b.name}") for op in OPS]
    return params + [pytest.param(("peer", "peer:torch.sdpa", _torch_sdpa),
                                  id="peer:torch.sdpa"),
                     pytest.param(("peer", "peer:jax.nn.dpa", _jax_dpa), id="peer:jax.nn.dpa")]


def _too_big(op: str, label: str, b: int, t: int, h: int) -> str | None:
    if op == "parallel" and 4 * b * h * t * t * 3 > PARALLEL_MAX_BYTES:
        return f"parallel form at {label}: (B, H, T, T) matrices exceed the memory budget"
    return None


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("impl", _impls())
def test_linear_attention(benchmark, impl, shape):
    label, *dims = shape
    slow = dims[1] >= 4096  # a few seconds per call on CPU: 2 rounds
    kind, op, what = impl
    if kind == "peer":
        _bench.run(benchmark, what(*dims), op, slow=slow)
        return
    if what.name == "reference" and dims[1] > REFERENCE_MAX_T:
        pytest.skip(f"NumPy reference not timed above T={REFERENCE_MAX_T} (too slow)")
    if reason := _too_big(op, label, dims[0], dims[1], dims[2]):
        pytest.skip(reason)
    stem, params = OPS[op]
    fn = _bench.backend_callable(what, stem, _arrays(stem, *dims), params)
    name = "reference" if what.name == "reference" else f"{op}/{what.name}"
    _bench.run(benchmark, fn, name, slow=slow or what.name == "reference")
