"""The Pallas FlashAttention forward equals lmspec.reference.sdpa at any block size.

A property of the kernel, not of a backend: the blocks are forced through the kernel's
``block_q`` / ``block_k`` and (out, lse) are judged by the tolerance policy
(lmspec.spec._tolerance.judge) against the float64 reference, with the naive baseline of the
conformance suite. Without a GPU the kernel runs in Pallas interpret mode; small shapes only
(each new shape is a new trace). Gradients come from the XLA backward (a custom_vjp): checked
once here for the wiring; the conformance suite checks them in full.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from lmspec.spec import Case
from lmspec.spec.sdpa import COMPONENT

jax = pytest.importorskip("jax")

from lmspec.backends import jax_xla as J  # noqa: E402
from lmspec.backends.jax_xla.kernels.sdpa import sdpa as flash  # noqa: E402
from lmspec.conformance import _check as C  # noqa: E402
from lmspec.spec._tolerance import judge  # noqa: E402

GPU = jax.default_backend() == "gpu"
INTERPRET = not GPU
# (BLOCK_Q, BLOCK_K): unequal, and not dividing the sequences (padded and masked); a GPU's dots
# need >= 16, interpret mode takes any size
TILES = [(16, 16), (32, 16), (16, 64)] if GPU else [(8, 4), (4, 8), (16, 16)]
DTYPES = ("float32", "bfloat16", "float16")


def _native(arrays: dict, dtype: str) -> dict:
    ints = COMPONENT.integer_inputs
    return {n: None if a is None else J.asarray(a, None if n in ints else dtype)
            for n, a in arrays.items()}


def _check(name: str, got, ref, naive, mag: float, dtype: str, kind: str, case: Case, tiles):
    got = J.to_numpy(got)
    v = judge(got, ref, naive, out_dtype=got.dtype, kind=kind, component="sdpa", dtype=dtype,
              neg_inf_ok=name == "lse", magnitude=mag)
    shapes = {n: None if a is None else a.shape for n, a in case.arrays.items()}
    assert v.ok, (f"{name} [{dtype}, blocks {tiles}]: err {v.err:.3g} > bound {v.bound:.3g} "
                  f"at {v.worst_index} (got {v.worst_value}, ref {v.worst_ref}) {v.reason}; "
                  f"{shapes} {case.params}")


def check_kernel(case: Case, dtype: str, tiles: tuple[int, int], grads: bool = False) -> None:
    """Forward (out, lse) of the kernel at ``tiles`` vs the reference; with ``grads`` also the
    gradients (q, k, v) through the kernel's custom_vjp."""
    arrays = C.rounded(case, "sdpa", C.numpy_dtype(dtype))
    native = _native(arrays, dtype)
    diff = COMPONENT.differentiable

    def run(*qkv):
        return flash(*qkv, native["segment_ids_q"], native["segment_ids_kv"], **case.params,
                     block_q=tiles[0], block_k=tiles[1], interpret=INTERPRET)

    outs, pull = jax.vjp(run, *(native[n] for n in diff))
    ref = C.reference_outputs("sdpa", arrays, case.params)
    naive = C.reference_outputs("sdpa", arrays, case.params, C.numpy_dtype(dtype))
    mags = C.magnitudes("sdpa", arrays, case.params)
    for name, got, r, n, m in zip(COMPONENT.outputs, outs, ref, naive, mags, strict=True):
        _check(name, got, r, n, m, dtype, "output", case, tiles)
    if not grads:
        return
    cts = C.cotangents_for("sdpa", ref, 0, C.numpy_dtype(dtype))
    got_g = pull(tuple(jax.numpy.asarray(c, o.dtype) for c, o in zip(cts, outs, strict=True)))
    ref_g = C.reference_grads("sdpa", cts, arrays, case.params)
    naive_g = C.reference_grads("sdpa", cts, arrays, case.params, C.numpy_dtype(dtype))
    mags_g = C.magnitudes("sdpa", arrays, case.params, cts)
    for n, g in zip(diff, got_g, strict=True):
        _check(f"d{n}", g, ref_g[n], naive_g[n], mags_g[n], dtype, "gradient", case, tiles)


@pytest.mark.parametrize("tiles", TILES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=3, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=COMPONENT.cases())
def test_pallas_equals_reference_at_any_block_size(case, dtype, tiles):
    check_kernel(case, dtype, tiles)


def _long_case(rng, causal: bool, window, segments: bool, softcap) -> Case:
    """Longer than every block: B 2, Tq 29 of Tk 35 (bottom-right offset), Hq 4 on Hkv 2,
    D 16, Dv 3 (padded to 4 in interpret mode, 16 on a GPU)."""
    b, tq, tk, d, dv = 2, 29, 35, 16, 3
    arrays = {"q": rng.standard_normal((b, tq, 4, d)), "k": rng.standard_normal((b, tk, 2, d)),
              "v": rng.standard_normal((b, tk, 2, dv)), "segment_ids_q": None,
              "segment_ids_kv": None}
    if segments:
        arrays["segment_ids_q"] = np.sort(rng.integers(0, 3, (b, tq)), axis=1)
        arrays["segment_ids_kv"] = np.sort(rng.integers(0, 3, (b, tk)), axis=1)
    return Case(arrays, {"causal": causal, "window": window, "softcap": softcap, "scale": None})


MASKS = {"plain": (False, None, False, None), "causal": (True, None, False, None),
         "window-seg-softcap": (True, 7, True, 5.0)}


@pytest.mark.parametrize("tiles", TILES[:2], ids=str)
@pytest.mark.parametrize("masks", MASKS.values(), ids=MASKS.keys())
def test_pallas_long_sequences_span_many_blocks(masks, tiles):
    check_kernel(_long_case(np.random.default_rng(7), *masks), "bfloat16", tiles)


def test_pallas_gradients_through_the_xla_backward():
    check_kernel(_long_case(np.random.default_rng(3), *MASKS["window-seg-softcap"]), "float32",
                 TILES[0], grads=True)


@pytest.mark.parametrize("masks", list(MASKS.values())[::2], ids=list(MASKS)[::2])
def test_kernel_lowers_to_triton_for_cuda(masks):
    """The compiled path, without a GPU: interpret mode runs any jnp op, the Triton lowering
    only some (and only power-of-two loads). Lowering for CUDA builds the Triton IR here; a
    primitive it lacks fails here, not first on a GPU. (PTX compilation still needs one.)"""
    case = _long_case(np.random.default_rng(0), *masks)

    def shape(n, a):
        return None if a is None else jax.ShapeDtypeStruct(a.shape, "int32" if "seg" in n else
                                                            "bfloat16")

    args = [shape(n, a) for n, a in case.arrays.items()]
    lowered = jax.jit(lambda *a: flash(*a, **case.params)).trace(*args).lower(
        lowering_platforms=("cuda",))
    assert "xla.gpu.triton" in lowered.as_text()


def test_backend_dispatches_to_the_kernel(monkeypatch):
    """LMSPEC_PALLAS_INTERPRET=1 (or a GPU) routes jax_xla's sdpa through the pallas_call."""
    q = J.asarray(np.ones((1, 3, 2, 4)), "float32")

    def traced() -> str:
        return str(jax.make_jaxpr(lambda a: J.sdpa(a, a, a, causal=True))(q))

    monkeypatch.setenv("LMSPEC_PALLAS_INTERPRET", "1")
    assert "pallas_call" in traced()
    monkeypatch.delenv("LMSPEC_PALLAS_INTERPRET")
    assert ("pallas_call" in traced()) == GPU
