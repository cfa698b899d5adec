"""The quantizers' assertion path: discrete codes compared exactly with the knife-edge rule,
float scales under the tolerance policy, each failure with a reproducer (via _check).

Codes are judged against the reference's rounding of the exact quotient ``x / scale`` taken
with the BACKEND's own scales (once those have passed their own check), so that a scale one
float32 ulp off does not shift every code: a code is accepted if it is the reference's code of
``y (1 - m)`` or of ``y (1 + m)``, ``m = spec._quant.QUOTIENT_MARGIN``; the two differ only
within ``m |y|`` of a rounding boundary, the knife edge, where either neighbour is correct.
Property tests on exact quotients (powers-of-two scales) pass ``margin=0``: no knife edge.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lmspec.conformance import _check as check
from lmspec.conformance import _results
from lmspec.spec import Case
from lmspec.spec._quant import QUOTIENT_MARGIN
from lmspec.spec._tolerance import judge


def outputs(target, stem: str, case: Case, test: str = "forward"):
    """(inputs as everyone sees them, the backend's outputs as NumPy in their own dtypes), or
    None when the backend declines the case (recorded as unsupported)."""
    check.require_impl(target, stem)
    arrays = check.rounded(case, stem, target.np_dtype)
    outs = check.run_case(target, stem, test, lambda: target.backend.call(
        stem, check.to_native(target, stem, arrays), case.params))
    if outs is None:
        return None
    return arrays, [np.asarray(target.backend.to_numpy(o)) for o in outs]


def expect_layout(target, stem: str, case: Case, name: str, got: np.ndarray,
                  shape: tuple[int, ...], dtype, test: str = "forward") -> None:
    """The spec's shape and dtype, exactly (codes are int8/uint8, scales float32)."""
    if got.shape != tuple(shape) or got.dtype != np.dtype(dtype):
        check.fail(f"expected {np.dtype(dtype).name} of shape {tuple(shape)}, got "
                   f"{got.dtype.name} of shape {got.shape}", target, stem, test, name, case)


def check_float(target, stem: str, case: Case, name: str, got: np.ndarray, ref,
                test: str = "forward") -> None:
    """A float32 scale under the tolerance policy; the reference computes scales exactly as
    specified (one rounding), so its naive evaluation is itself: the bound is the floor."""
    ref = np.asarray(ref, np.float64)
    verdict = judge(np.asarray(got, np.float64), ref, ref, out_dtype=np.dtype(np.float32),
                    kind="output", backend=target.backend.name, component=stem,
                    dtype=target.dtype)
    check.settle(verdict, target, stem, test, name, case)


def check_codes(target, stem: str, case: Case, name: str, got: np.ndarray, y,
                encode: Callable[[np.ndarray], np.ndarray], test: str = "forward",
                margin: float = QUOTIENT_MARGIN) -> None:
    """``got == encode(y)`` exactly, except on the knife edge (see the module docstring)."""
    y = np.asarray(y, np.float64)
    lo, hi = np.asarray(encode(y * (1 - margin))), np.asarray(encode(y * (1 + margin)))
    got = np.asarray(got)
    if got.shape != lo.shape:
        check.fail(f"shape {got.shape}, expected {lo.shape}", target, stem, test, name, case)
    ok = (got == lo) | (got == hi)
    _results.record_check(stem, target, test, name, None)
    if ok.all():
        return
    idx = tuple(int(i) for i in np.argwhere(~ok)[0])
    edge = lo[idx] != hi[idx]
    want = f"{int(lo[idx])} or {int(hi[idx])} (a knife edge)" if edge else f"{int(lo[idx])}"
    check.fail(f"{int((~ok).sum())} of {ok.size} codes differ; first at index {idx}: got "
               f"{int(got[idx])}, expected {want}; the exact quotient x / scale there is "
               f"{y[idx]!r} (knife-edge margin {margin:g} relative"
               f"{', none: this quotient is exact in float32' if margin == 0 else ''})",
               target, stem, test, name, case)


def check_equal(target, stem: str, case: Case, name: str, got, want, test: str,
                what: str) -> None:
    """Exact equality of two answers of the backend (a property), or with an exact value."""
    got, want = np.asarray(got), np.asarray(want)
    _results.record_check(stem, target, test, name, None)
    if got.shape != want.shape or not np.array_equal(got, want):
        idx = (tuple(int(i) for i in np.argwhere(got != want)[0])
               if got.shape == want.shape else None)
        where = (f"first at index {idx}: {got[idx]!r} vs {want[idx]!r}" if idx is not None
                 else f"shapes {got.shape} vs {want.shape}")
        check.fail(f"property violated: {what}; {where}", target, stem, test, name, case)
