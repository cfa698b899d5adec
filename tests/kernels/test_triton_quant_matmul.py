"""The Triton weight-only INT4/INT8 matmul kernel equals lmspec.reference.quant_matmul at any
tile size (forced through ``block_m`` / ``block_n`` / ``block_k``, including tiles that split a
group and a packed byte's neighbours across K tiles), judged by the tolerance policy with the
conformance suite's naive baseline. Without a GPU it runs in the Triton interpreter."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

import lmspec.backends  # noqa: F401 - sets TRITON_INTERPRET=1 without a GPU, before triton
from lmspec.spec import Case
from lmspec.spec.quant_matmul import COMPONENT

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from lmspec.backends.torch_triton import _protocol as P  # noqa: E402
from lmspec.backends.torch_triton.kernels.quant_matmul import quant_matmul_fwd  # noqa: E402
from lmspec.conformance import _check as C  # noqa: E402
from lmspec.spec._tolerance import judge  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
# (BLOCK_M, BLOCK_N, BLOCK_K): K tiles smaller than, equal to and larger than a group; odd
# K tiles of 1 split a byte's two nibbles across tiles in the interpreter (tiles are powers
# of two; a GPU's tl.dot needs >= 16)
TILES = [(16, 16, 16), (16, 32, 64)] if GPU else [(16, 16, 16), (2, 4, 8), (4, 2, 1)]
DTYPES = ("float32", "bfloat16", "float16")


def check_kernel(case: Case, dtype: str, tiles: tuple[int, int, int]) -> None:
    if case.params.get("mode") == "w8a8":  # the kernel is weight-only; W8A8 is torch._int_mm
        return
    arrays = C.rounded(case, "quant_matmul", C.numpy_dtype(dtype))
    native = {n: None if a is None else P.asarray(a, None if n in COMPONENT.integer_inputs
                                                   else dtype).to(DEVICE)
              for n, a in arrays.items()}
    y = quant_matmul_fwd(**native, bits=case.params["bits"],
                         group_size=case.params["group_size"], block_m=tiles[0],
                         block_n=tiles[1], block_k=tiles[2])
    (ref,) = C.reference_outputs("quant_matmul", arrays, case.params)
    (naive,) = C.reference_outputs("quant_matmul", arrays, case.params, C.numpy_dtype(dtype))
    (mag,) = C.magnitudes("quant_matmul", arrays, case.params)
    got = P.to_numpy(y)
    v = judge(got, ref, naive, out_dtype=got.dtype, kind="output", component="quant_matmul",
              dtype=dtype, magnitude=mag)
    assert v.ok, (f"y [{dtype}, tiles {tiles}]: err {v.err:.3g} > bound {v.bound:.3g} at "
                  f"{v.worst_index} (got {v.worst_value}, ref {v.worst_ref}) {v.reason}; "
                  f"{case.describe()}")


@pytest.mark.parametrize("tiles", TILES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=5, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=COMPONENT.cases())
def test_kernel_matches_reference(dtype, tiles, case):
    check_kernel(case, dtype, tiles)


def test_odd_tiles_split_a_byte():
    """K tiles of 1: every byte is read by two tiles, one nibble each."""
    import numpy as np

    rng = np.random.default_rng(0)
    case = Case({"x": rng.standard_normal((3, 6)),
                 "packed": rng.integers(0, 256, (4, 3)).astype(np.uint8),
                 "scales": rng.uniform(0.05, 0.2, (4, 3)),
                 "zeros": rng.integers(0, 16, (4, 3)).astype(np.uint8)},
                {"bits": 4, "group_size": 2})
    check_kernel(case, "float32", (2, 2, 1) if not GPU else (16, 16, 16))
