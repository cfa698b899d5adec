"""Benchmark of quantized matmul at N = K = 4096 (a 4096 x 4096 weight), M = 16 (decode) and 256
(prefill) tokens: INT4 weight-only and W8A8 on each backend, against the float32 matmul
(torch.matmul, jnp.dot) on the same shapes. Gate (issue 6): the torch backend's int8 path
(W8A8: per-token activation quantization + torch._int_mm + scaling) is no slower than the
float32 matmul at 4096 x 4096."""

from __future__ import annotations

import numpy as np
import pytest

from lmspec import reference as R
from lmspec.conformance import _bench

SHAPES = ([("M16xK512", 16, 512, 512)] if _bench.QUICK else
          [("M16xK4096", 16, 4096, 4096), ("M256xK4096", 256, 4096, 4096)])
GROUP = 128
MODES = ("int4", "w8a8")


def _arrays(m: int, n: int, k: int, mode: str) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((m, k)), rng.standard_normal((n, k)) / np.sqrt(k)
    if mode == "int4":
        packed, scales, zeros = R.quant_int4(w, group_size=GROUP)
        return ({"x": x, "packed": packed, "scales": scales, "zeros": zeros},
                {"bits": 4, "group_size": GROUP})
    codes, s = R.quant_int8(w, axis=-1)
    return ({"x": x, "packed": codes, "scales": s[:, None], "zeros": None},
            {"bits": 8, "group_size": k, "mode": "w8a8"})


def _impls() -> list:
    params = []
    for b in _bench.selected_backends():
        if not b.has("quant_matmul"):
            continue
        modes = ("int4",) if b.name == "reference" else MODES
        params += [pytest.param(("backend", (b, mode)), id=f"{b.name}/{mode}") for mode in modes]
    return params + [pytest.param(("peer", "peer:torch.mm.f32"), id="peer:torch.mm.f32"),
                     pytest.param(("peer", "peer:jnp.dot.f32"), id="peer:jnp.dot.f32")]


def _peer(name: str, m: int, n: int, k: int):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(
        np.float32)
    if name == "peer:torch.mm.f32":
        torch = pytest.importorskip("torch")
        xt, wt = _bench.torch_from_numpy(x), _bench.torch_from_numpy(w)
        return lambda: torch.matmul(xt, wt)
    jax = pytest.importorskip("jax")
    xj, wj = jax.numpy.asarray(x), jax.numpy.asarray(w)
    fn = jax.jit(jax.numpy.dot)
    return lambda: _bench.sync(fn(xj, wj))


def _callable(backend, arrays: dict, params: dict):
    """Like _bench.backend_callable, but codes keep their storage dtype (uint8 / int8): the
    conformance harness widens integers to int64, which a serving stack never does."""
    if backend.name == "reference":
        return _bench.backend_callable(backend, "quant_matmul", arrays, params)
    native = {n: backend.asarray(a, "float32") for n, a in arrays.items()
              if a is not None and a.dtype.kind == "f"}
    ints = {n: a for n, a in arrays.items() if a is not None and a.dtype.kind in "iu"}
    if backend.name.startswith("torch"):
        native.update({n: _bench.torch_from_numpy(np.ascontiguousarray(a))
                       for n, a in ints.items()})
    else:
        import jax.numpy as jnp

        native.update({n: jnp.asarray(a) for n, a in ints.items()})
    native.setdefault("zeros", None)
    fn = backend.fn("quant_matmul")
    return lambda: _bench.sync(fn(**native, **params))


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("impl", _impls())
def test_quant_matmul(benchmark, impl, shape):
    _, m, n, k = shape
    kind, what = impl
    if kind == "peer":
        _bench.run(benchmark, _peer(what, m, n, k), what)
        return
    backend, mode = what
    arrays, params = _arrays(m, n, k, mode)
    if backend.name == "jax_xla" and mode == "w8a8":
        pytest.skip("jax_xla declines mode='w8a8' (see backends/jax_xla/quant_matmul.py)")
    fn = _callable(backend, arrays, params)
    name = "reference" if backend.name == "reference" else f"{backend.name}/{mode}"
    _bench.run(benchmark, fn, name, slow=backend.name == "reference")
