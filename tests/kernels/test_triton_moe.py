"""The Triton grouped GEMM of the MoE experts (kernels/moe.py) at any tile size.

Two levels. The bare kernel on integer-valued operands, where float32 accumulation is exact,
so it must equal the grouped product EXACTLY in float32 and bfloat16: empty experts, no rows
at all, tiles that straddle a group's end (row tiles that do not divide the group sizes) and
strided (transposed) weights, which the backward uses. The MoE layer with its routed experts
on the kernel (``forward(..., kernel=True, tiles=...)``), forward and every gradient judged by
the tolerance policy against lmspec.reference.moe_layer with the conformance suite's naive
baseline, ``kept`` exactly. Without a GPU the kernels run in the Triton interpreter
(lmspec.backends sets TRITON_INTERPRET=1 before triton is imported): tiny shapes only.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import lmspec.backends  # noqa: F401 - sets TRITON_INTERPRET=1 without a GPU, before triton
from lmspec.spec import Case
from lmspec.spec.moe_layer import COMPONENT

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from lmspec.backends.torch_triton import _protocol as P  # noqa: E402
from lmspec.backends.torch_triton.kernels import moe as K  # noqa: E402
from lmspec.backends.torch_triton.moe_layer import forward as moe_forward  # noqa: E402
from lmspec.conformance import _check as C  # noqa: E402
from lmspec.spec._tolerance import judge  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
# (BLOCK_M, BLOCK_N, BLOCK_K): row tiles of 2 and 4 cut groups of 1, 3, 5 rows so that tiles
# straddle a group's end; K tiles of 1 and 2 split the reduction (a GPU's tl.dot needs >= 16)
TILES = [(16, 16, 16), (32, 64, 32)] if GPU else [(16, 16, 16), (2, 4, 2), (4, 2, 1)]
DTYPES = ("float32", "bfloat16")
TORCH = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _grouped_np(x: np.ndarray, w: np.ndarray, counts) -> np.ndarray:
    out, s = np.zeros((x.shape[0], w.shape[2])), 0
    for e, c in enumerate(counts):
        out[s:s + c] = x[s:s + c] @ w[e]
        s += c
    return out


@pytest.mark.parametrize("tiles", TILES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("counts", [[3, 0, 5, 1, 0], [0, 0, 0], [0, 7], [1], [2, 2, 2, 2]],
                         ids=str)
def test_grouped_matmul_is_exact_on_integers(counts, dtype, tiles):
    """Integer operands in [-4, 4], K <= 9: every product and partial sum is exact in float32
    and the results (|y| <= 144) in bfloat16, so any difference is a wrong row, expert or tile
    (a straddling tile computing or writing the next group's rows, a dropped K or N tail)."""
    rng = np.random.default_rng(sum(counts))
    m, k, n = sum(counts), 9, 7
    x = rng.integers(-4, 5, (m, k)).astype(np.float64)
    w = rng.integers(-4, 5, (len(counts), k, n)).astype(np.float64)
    tx, tw = (torch.as_tensor(a).to(DEVICE, TORCH[dtype]) for a in (x, w))
    y = K.grouped_matmul(tx, tw, counts, tiles)
    assert y.dtype == tx.dtype and y.shape == (m, n)
    want = _grouped_np(x, w, counts)
    got = y.float().cpu().numpy()
    bad = np.argwhere(got != want)
    assert not bad.size, (f"grouped_matmul [{dtype}, tiles {tiles}, counts {counts}] differs at "
                          f"(row, col) {tuple(bad[0])}: got {got[tuple(bad[0])]}, want "
                          f"{want[tuple(bad[0])]}")
    # strided weights (the backward's dx uses w.transpose(1, 2) without a copy)
    wt = np.ascontiguousarray(np.swapaxes(w, 1, 2))  # (E, N, K)
    tt = torch.as_tensor(wt).to(DEVICE, TORCH[dtype]).transpose(1, 2)  # (E, K, N) view
    np.testing.assert_array_equal(K.grouped_matmul(tx, tt, counts, tiles).float().cpu().numpy(),
                                  want)


def test_grouped_matmul_rejects_mismatched_counts():
    x, w = torch.zeros((4, 3)), torch.zeros((2, 3, 5))
    with pytest.raises(ValueError, match="counts"):
        K.grouped_matmul(x, w, [1, 2], None)


def _native(arrays: dict, dtype: str) -> dict:
    ints = COMPONENT.integer_inputs
    return {n: None if a is None else
            P.asarray(a, None if n in ints else dtype).to(DEVICE) for n, a in arrays.items()}


def _judge(name, got, ref, naive, mag, dtype, kind, case, tiles):
    got = P.to_numpy(got)
    v = judge(got, ref, naive, out_dtype=got.dtype, kind=kind, component="moe_layer",
              dtype=dtype, magnitude=mag)
    assert v.ok, (f"{name} [{dtype}, tiles {tiles}]: err {v.err:.3g} > bound {v.bound:.3g} "
                  f"at {v.worst_index} (got {v.worst_value}, ref {v.worst_ref}) {v.reason}; "
                  f"{case.describe()}")


def check_layer(case: Case, dtype: str, tiles, seed: int = 0) -> None:
    """out (policy), kept (exact) and the gradients of every differentiable input (policy) of
    the layer with its experts on the kernel at ``tiles``, against the reference."""
    np_dtype = C.numpy_dtype(dtype)
    arrays = C.rounded(case, "moe_layer", np_dtype)
    native = _native(arrays, dtype)
    wrt = [n for n in COMPONENT.differentiable if native[n] is not None]
    for n in wrt:
        native[n].requires_grad_(True)
    out, kept = moe_forward(*(native[n] for n in COMPONENT.inputs),
                            case.params["capacity_factor"], kernel=True, tiles=tiles)
    ref = C.reference_outputs("moe_layer", arrays, case.params)
    naive = C.reference_outputs("moe_layer", arrays, case.params, np_dtype)
    mags = C.magnitudes("moe_layer", arrays, case.params)
    _judge("out", out.detach(), ref[0], naive[0], mags[0], dtype, "output", case, tiles)
    got_kept = P.to_numpy(kept)
    assert np.array_equal(got_kept.astype(bool), np.asarray(ref[1]).astype(bool)), (
        f"kept differs from the reference [{dtype}, tiles {tiles}]; {case.describe()}")
    if not wrt or out.numel() == 0:
        return
    cts = C.cotangents_for("moe_layer", ref, seed, np_dtype)
    out.backward(torch.as_tensor(cts[0]).to(DEVICE, out.dtype))
    ref_g = C.reference_grads("moe_layer", cts, arrays, case.params)
    naive_g = C.reference_grads("moe_layer", cts, arrays, case.params, np_dtype)
    mags_g = C.magnitudes("moe_layer", arrays, case.params, cts)
    for n in wrt:
        grad = native[n].grad
        if grad is None:  # not reached by the output (every assignment dropped): zero
            grad = torch.zeros_like(native[n])
        _judge(f"d{n}", grad, ref_g[n], naive_g[n], mags_g.get(n, 0.0), dtype, "gradient",
               case, tiles)


@pytest.mark.parametrize("tiles", TILES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=4, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=COMPONENT.cases())
def test_layer_on_the_kernel_matches_reference(dtype, tiles, case):
    check_layer(case, dtype, tiles)


def _case(n: int, ids, e: int, rng, d: int = 5, f: int = 3, cf=None) -> Case:
    k = np.shape(ids)[1]
    return Case({"x": rng.standard_normal((n, d)), "topk_ids": np.asarray(ids, np.int64),
                 "topk_weights": rng.uniform(0.2, 1.0, (n, k)),
                 "w_gate": rng.standard_normal((e, d, f)), "w_up": rng.standard_normal((e, d, f)),
                 "w_down": rng.standard_normal((e, f, d)), "shared_w_gate": None,
                 "shared_w_up": None, "shared_w_down": None, "shared_gate": None},
                {"capacity_factor": cf})


@pytest.mark.parametrize("tiles", TILES, ids=str)
def test_layer_empty_experts_straddling_tiles_and_no_tokens(tiles):
    """Experts 1 and 3 of 5 get no rows, the others 3, 3 and 6 (one token picks expert 4
    twice; row tiles of 2 and 4 straddle the ends of the groups of 3); the same under a
    capacity of 2 (drops), then no tokens at all."""
    rng = np.random.default_rng(3)
    ids = [[0, 2], [2, 4], [4, 2], [4, 4], [4, 0], [4, 0]]  # counts 3, 0, 3, 0, 6 (one repeat)
    check_layer(_case(6, ids, 5, rng), "float32", tiles)
    check_layer(_case(6, ids, 5, rng, cf=0.5), "bfloat16", tiles)
    check_layer(_case(0, np.zeros((0, 2)), 3, rng), "float32", tiles)


@pytest.mark.skipif(GPU, reason="the triton_interpret backend loads only without a GPU")
def test_interpret_backend_takes_the_kernel_path(monkeypatch):
    """The triton_interpret backend's moe_layer sends CPU float32 tensors through the kernel."""
    from lmspec.backends.torch_triton import interpret

    calls = []
    real = K.grouped_matmul
    monkeypatch.setattr(K, "grouped_matmul", lambda *a: calls.append(1) or real(*a))
    case = _case(4, [[0, 1], [1, 1], [2, 0], [0, 2]], 3, np.random.default_rng(1))
    native = _native(case.arrays, "float32")
    interpret.moe_layer(*(native[n] for n in COMPONENT.inputs))
    assert len(calls) == 2, f"expected two grouped GEMM launches, got {len(calls)}"
