"""The Triton FlashAttention kernels equal lmspec.reference.sdpa at any tile size.

A property of the kernel, not of a backend: the tiles are forced through the kernel's
``block_m`` / ``block_n`` and every output and gradient is judged by the tolerance policy
(lmspec.spec._tolerance.judge) against the float64 reference, with the naive baseline of the
conformance suite. On a machine without a GPU the kernels run in the Triton interpreter
(lmspec.backends sets TRITON_INTERPRET=1 before triton is imported); small shapes only.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import lmspec.backends  # noqa: F401 - sets TRITON_INTERPRET=1 without a GPU, before triton
from lmspec.spec import Case
from lmspec.spec.sdpa import COMPONENT

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from lmspec.backends.torch_triton import _protocol as P  # noqa: E402
from lmspec.backends.torch_triton.kernels.sdpa import sdpa as flash  # noqa: E402
from lmspec.conformance import _check as C  # noqa: E402
from lmspec.spec._tolerance import judge  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
# (BLOCK_M, BLOCK_N): unequal and smaller than the sequences, so that queries and keys span
# several tiles; a GPU's tl.dot needs >= 16, the interpreter takes any size
TILES = [(16, 16), (32, 16), (16, 64)] if GPU else [(16, 16), (4, 8), (8, 4)]
DTYPES = ("float32", "bfloat16", "float16")


def _native(arrays: dict, dtype: str) -> dict:
    ints = COMPONENT.integer_inputs
    return {n: None if a is None else
            P.asarray(a, None if n in ints else dtype).to(DEVICE) for n, a in arrays.items()}


def _check(name: str, got, ref, naive, mag: float, dtype: str, kind: str, case: Case, tiles):
    got = P.to_numpy(got)
    v = judge(got, ref, naive, out_dtype=got.dtype, kind=kind, component="sdpa", dtype=dtype,
              neg_inf_ok=name == "lse", magnitude=mag)
    shapes = {n: None if a is None else a.shape for n, a in case.arrays.items()}
    assert v.ok, (f"{name} [{dtype}, tiles {tiles}]: err {v.err:.3g} > bound {v.bound:.3g} "
                  f"at {v.worst_index} (got {v.worst_value}, ref {v.worst_ref}) {v.reason}; "
                  f"{shapes} {case.params}")


def check_kernel(case: Case, dtype: str, tiles: tuple[int, int], seed: int = 0) -> None:
    """Forward (out, lse) and gradients (q, k, v) of the kernel at ``tiles`` vs reference."""
    arrays = C.rounded(case, "sdpa", C.numpy_dtype(dtype))
    native = _native(arrays, dtype)
    for n in COMPONENT.differentiable:
        native[n].requires_grad_(True)
    out, lse = flash(**native, **case.params, block_m=tiles[0], block_n=tiles[1])
    ref = C.reference_outputs("sdpa", arrays, case.params)
    naive = C.reference_outputs("sdpa", arrays, case.params, C.numpy_dtype(dtype))
    mags = C.magnitudes("sdpa", arrays, case.params)
    for name, got, r, n, m in zip(COMPONENT.outputs, (out, lse), ref, naive, mags,
                                  strict=True):
        _check(name, got, r, n, m, dtype, "output", case, tiles)
    cts = C.cotangents_for("sdpa", ref, seed, C.numpy_dtype(dtype))
    torch.autograd.backward([out, lse], [torch.as_tensor(c).to(DEVICE, o.dtype)
                                         for c, o in zip(cts, (out, lse), strict=True)])
    ref_g = C.reference_grads("sdpa", cts, arrays, case.params)
    naive_g = C.reference_grads("sdpa", cts, arrays, case.params, C.numpy_dtype(dtype))
    mags_g = C.magnitudes("sdpa", arrays, case.params, cts)
    for n in COMPONENT.differentiable:
        _check(f"d{n}", native[n].grad, ref_g[n], naive_g[n], mags_g[n], dtype, "gradient",
               case, tiles)


@pytest.mark.parametrize("tiles", TILES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=6, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=COMPONENT.cases())
def test_flash_equals_reference_at_any_tile_size(case, dtype, tiles):
    check_kernel(case, dtype, tiles)


def _long_case(rng, causal: bool, window, segments: bool, softcap) -> Case:
    """Longer than every tile: B 2, Tq 29 of Tk 35 (bottom-right offset), Hq 4 on Hkv 2."""
    b, tq, tk, d, dv = 2, 29, 35, 16, 8
    arrays = {"q": rng.standard_normal((b, tq, 4, d)), "k": rng.standard_normal((b, tk, 2, d)),
              "v": rng.standard_normal((b, tk, 2, dv)), "segment_ids_q": None,
              "segment_ids_kv": None}
    if segments:
        arrays["segment_ids_q"] = np.sort(rng.integers(0, 3, (b, tq)), axis=1)
        arrays["segment_ids_kv"] = np.sort(rng.integers(0, 3, (b, tk)), axis=1)
    return Case(arrays, {"causal": causal, "window": window, "softcap": softcap, "scale": None})


@pytest.mark.parametrize("tiles", TILES, ids=str)
@pytest.mark.parametrize("masks", [(False, None, False, None), (True, None, False, None),
                                   (True, 7, True, 5.0)], ids=["plain", "causal", "window-seg"])
def test_flash_long_sequences_span_many_tiles(masks, tiles):
    check_kernel(_long_case(np.random.default_rng(7), *masks), "bfloat16", tiles)
