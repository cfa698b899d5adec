"""The one assertion path of the conformance suite: run a backend and the reference on the same
case, judge every output and gradient by the tolerance policy, record the result, and on
failure say how to reproduce it in one line."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from lmspec.backends import numpy_dtype
from lmspec.conformance import _results
from lmspec.conformance._inputs import (
    cotangents_for,
    magnitudes,
    reference_grads,
    reference_outputs,
    rounded,
    to_native,
)
from lmspec.conformance._saved import load_case, save_case
from lmspec.conformance._target import Target
from lmspec.spec import Case, _coverage, component
from lmspec.spec._tolerance import Verdict, judge

# The public surface, read as check.X / C.X by conformance tests, the CLI and kernel tests.
# Re-exported from the modules this one was split into: Target (_target); rounded, magnitudes,
# to_native, cotangents_for, reference_outputs, reference_grads (_inputs); save_case, load_case
# (_saved); numpy_dtype (lmspec.backends, read as C.numpy_dtype by tests/kernels).
__all__ = [
    "NOT_IMPLEMENTED", "Target", "check_backward", "check_errors", "check_forward", "check_same",
    "cotangents_for", "explain", "fail", "load_case", "magnitudes", "numpy_dtype", "output_dtype",
    "outputs_np", "reference_grads", "reference_outputs", "require_impl", "rounded", "run_case",
    "save_case", "settle", "standard_tests", "to_native",
]

NOT_IMPLEMENTED = "not implemented"


# ----------------------------------------------------------------------------- checks


def require_impl(target: Target, stem: str, grad: bool = False) -> None:
    dtype = None if target.dtype == "-" else target.dtype  # "-": a dtype-free stem
    if not target.backend.has(stem, dtype) or (grad and not target.backend.has_vjp(stem)):
        _results.record_status(stem, target, "gradient" if grad else "forward", NOT_IMPLEMENTED)
        pytest.skip(f"{NOT_IMPLEMENTED}: {target.backend.name} has no {stem}"
                    f"{' gradient' if grad else ''} in {target.dtype}")


def run_case(target: Target, stem: str, test: str, fn: Callable[[], Any]) -> Any:
    """Run backend code; a NotImplementedError for this case is recorded, never passed."""
    try:
        return fn()
    except NotImplementedError as e:
        _results.record_unsupported(stem, target, test, str(e))
        return None


def check_forward(target: Target, stem: str, case: Case) -> None:
    comp = component(stem)
    _coverage.emit(comp, case)
    require_impl(target, stem)
    arrays = rounded(case, stem, target.np_dtype)
    outs = run_case(target, stem, "forward", lambda: target.backend.call(
        stem, to_native(target, stem, arrays), case.params))
    if outs is None:
        return
    ref = reference_outputs(stem, arrays, case.params)
    naive = reference_outputs(stem, arrays, case.params, target.np_dtype)
    _require_in_range(stem, ref, naive, target)
    mags = magnitudes(stem, arrays, case.params)
    _expect_count(len(outs), len(comp.outputs), stem, target, "outputs")
    for name, got, r, n, mag in zip(comp.outputs, outs, ref, naive, mags):
        got_np = target.backend.to_numpy(got)
        verdict = judge(got_np, r, n, out_dtype=output_dtype(got_np, target), kind="output",
                        backend=target.backend.name, component=stem, dtype=target.dtype,
                        neg_inf_ok=name in comp.neg_inf_outputs, magnitude=mag)
        settle(verdict, target, stem, "forward", name, case)


def check_backward(target: Target, stem: str, case: Case, seed: int) -> None:
    comp = component(stem)
    _coverage.emit(comp, case)
    if not comp.differentiable:
        pytest.skip(f"{stem} has no gradient")
    require_impl(target, stem, grad=True)
    arrays = rounded(case, stem, target.np_dtype)
    ref = reference_outputs(stem, arrays, case.params)
    cts = cotangents_for(stem, ref, seed, target.np_dtype)
    native = to_native(target, stem, arrays)
    wrt = tuple(n for n in comp.differentiable if arrays.get(n) is not None)
    grads = run_case(target, stem, "gradient", lambda: target.backend.vjp(
        stem, native, case.params, _native_cts(target, stem, cts), wrt))
    if grads is None:
        return
    ref_g = reference_grads(stem, cts, arrays, case.params)
    naive_g = reference_grads(stem, cts, arrays, case.params, target.np_dtype)
    _require_in_range(stem, [ref_g[n] for n in wrt], [naive_g[n] for n in wrt], target)
    mags = magnitudes(stem, arrays, case.params, cts)
    for name in wrt:
        if grads.get(name) is None:
            fail(f"no gradient returned for {name!r}", target, stem, "gradient", name, case)
        got_np = target.backend.to_numpy(grads[name])
        verdict = judge(got_np, ref_g[name], naive_g[name], out_dtype=output_dtype(got_np, target),
                        kind="gradient", backend=target.backend.name, component=stem,
                        dtype=target.dtype, magnitude=mags.get(name, 0.0))
        settle(verdict, target, stem, "gradient", name, case, extra={"ct_seed": seed})


def check_errors(target: Target, stem: str,
                 call: Callable[[Mapping[str, Any]], Any] | None = None) -> None:
    """Every error input of the spec raises the stated exception naming the argument.

    ``call(params)`` makes the call of a dtype-free component (no arrays), where a
    NotImplementedError is recorded as unsupported; by default the error case's arrays and
    params go to the backend's ``stem``."""
    require_impl(target, stem)
    for err in component(stem).errors:
        arrays, params = err.build()
        try:
            if call is None:
                target.backend.call(stem, {n: target.backend.asarray(a, _error_dtype(a, target))
                                           for n, a in arrays.items()}, params)
            else:
                try:
                    call(params)
                except NotImplementedError as e:
                    _results.record_unsupported(stem, target, "errors", str(e))
                    continue
        except err.exception as e:
            if not err.message_ok(e):
                pytest.fail(f"{stem} [{target}] error case {err.name!r}: raised "
                            f"{type(e).__name__}({e}) but the message must match {err.match!r}")
            continue
        except Exception as e:  # noqa: BLE001 - the wrong exception type is the finding
            pytest.fail(f"{stem} [{target}] error case {err.name!r}: expected "
                        f"{err.exception.__name__} matching {err.match!r}, got "
                        f"{type(e).__name__}: {e}")
        pytest.fail(f"{stem} [{target}] error case {err.name!r}: expected "
                    f"{err.exception.__name__} matching {err.match!r}, nothing was raised")
    _results.record_check(stem, target, "errors", "all", None)


def _require_in_range(stem: str, ref: Sequence, naive: Sequence, target: Target) -> None:
    """A case is in the domain of a dtype only if the naive evaluation in that dtype stays
    finite wherever the exact answer is representable: inputs whose intermediates overflow
    float16 (say) are rejected (hypothesis draws another), not judged. A backend that
    overflows where naive does not still fails."""
    from hypothesis import reject

    for r, n in zip(ref, naive):
        if r is None:
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            representable = np.isfinite(np.asarray(r, np.float64).astype(target.np_dtype))
        if np.any(representable & ~np.isfinite(np.asarray(n, np.float64))):
            _results.record_out_of_range(stem, target, "out_of_range")
            reject()


def _error_dtype(a, target: Target) -> str | None:
    if a is None:
        return None
    return target.dtype if np.asarray(a).dtype.kind == "f" else None


def _native_cts(target: Target, stem: str, cts: Sequence[np.ndarray]) -> list:
    wide = component(stem).wide_outputs
    return [target.backend.asarray(c, "float32" if n in wide else target.dtype)
            for n, c in zip(component(stem).outputs, cts)]


def output_dtype(got: np.ndarray, target: Target) -> np.dtype:
    """The dtype the backend answered in; never wider than float64, never narrower than the
    target's (so an integer or float8 answer cannot shrink the floor)."""
    dt = np.dtype(got.dtype)
    return dt if dt.kind == "f" or dt.name == "bfloat16" else target.np_dtype


def _expect_count(got: int, want: int, stem: str, target: Target, what: str) -> None:
    if got != want:
        pytest.fail(f"{stem} [{target}]: returned {got} {what}, the spec has {want}")


# ----------------------------------------------------------------------------- reporting


def settle(verdict: Verdict, target: Target, stem: str, test: str, output: str, case: Case,
            extra: Mapping[str, Any] | None = None) -> None:
    _results.record_check(stem, target, test, output, verdict)
    if not verdict.ok:
        fail(explain(verdict), target, stem, test, output, case, extra)


def explain(v: Verdict) -> str:
    lines = [v.reason or "mismatch"]
    if v.worst_index is not None:
        lines.append(f"worst element at index {v.worst_index}: got {v.worst_value!r}, "
                     f"reference {v.worst_ref!r}")
    if v.fallback:
        lines.append(f"error {v.err:.3g}: naive baseline overflowed, fallback rtol/atol table")
    elif np.isfinite(v.err):
        rel = ">" if v.err > v.bound else "<="
        lines.append(f"error {v.err:.3g} {rel} bound {v.bound:.3g} = {v.k:g} x naive error "
                     f"{v.naive_err:.3g} + floor {v.floor:.3g}"
                     f"{' (weak case: bound tightened to naive)' if v.weak else ''}; "
                     f"ratio {v.ratio:.3g}")
    return "\n  ".join(lines)


def fail(detail: str, target: Target, stem: str, test: str, output: str, case: Case,
          extra: Mapping[str, Any] | None = None) -> None:
    lines = [f"\nlmspec conformance failure: {stem} {test}, output {output!r}",
             f"backend={target.backend.name} dtype={target.dtype}",
             f"case: {case.describe()}", detail]
    if test in ("forward", "gradient"):
        lines.append(f"reproduce: lmspec replay {save_case(case, stem, target, test, extra or {})}")
    node = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    if node:
        lines.append(f"rerun: lmspec conform --backend {target.backend.load_name} "
                     f"--component {stem} "
                     f"--dtype {target.dtype} -k '{node.split('::')[-1]}'")
    pytest.fail("\n  ".join(lines), pytrace=False)


# ----------------------------------------------------------------------------- properties


def outputs_np(target: Target, stem: str, case: Case) -> tuple[np.ndarray, ...] | None:
    """The backend's outputs on a case (inputs rounded to the dtype), as float64 NumPy."""
    arrays = rounded(case, stem, target.np_dtype)
    outs = run_case(target, stem, "property", lambda: target.backend.call(
        stem, to_native(target, stem, arrays), case.params))
    if outs is None:
        return None
    return tuple(np.asarray(target.backend.to_numpy(o), np.float64) for o in outs)


def check_same(target: Target, name: str, stem: str, case_a: Case, case_b: Case,
               view_a: Callable[[tuple], np.ndarray] = lambda o: o[0],
               view_b: Callable[[tuple], np.ndarray] = lambda o: o[0],
               stem_b: str | None = None) -> None:
    """A spec property ``view_a(stem(case_a)) == view_b(stem_b(case_b))``, on the backend.

    The property must hold exactly for the float64 reference (else the spec or the reference is
    wrong). On the backend both sides may err by their own naive error, so the bound is
    ``k * (err_naive_a + err_naive_b) + floor``.
    """
    require_impl(target, stem)
    stem_b = stem_b or stem
    require_impl(target, stem_b)
    sides = []
    for st, case, view in ((stem, case_a, view_a), (stem_b, case_b, view_b)):
        arrays = rounded(case, st, target.np_dtype)
        ref = np.asarray(view(reference_outputs(st, arrays, case.params)), np.float64)
        naive = np.asarray(view(tuple(np.asarray(o, np.float64) for o in reference_outputs(
            st, arrays, case.params, target.np_dtype))), np.float64)
        with np.errstate(all="ignore"):
            mag = max(magnitudes(st, arrays, case.params))
        got = outputs_np(target, st, case)
        if got is None:
            return
        sides.append((ref, naive, np.asarray(view(got), np.float64), mag))
    (ra, na, ga, ma), (rb, nb, gb, mb) = sides
    ref_gap = float(np.abs(np.where(np.isfinite(ra) & np.isfinite(rb), ra - rb, 0)).max(
        initial=0.0))
    with np.errstate(over="ignore", invalid="ignore"):
        # judged where both exact answers are numbers of the dtype: where one overflows it (a
        # z-loss of 3.6e5 in float16, say), a correct backend answers inf on both sides, and
        # inf - inf would make the gap NaN and the naive error (and with it the bound) inf
        finite = (np.isfinite(ra.astype(target.np_dtype)) & np.isfinite(
            rb.astype(target.np_dtype)) & np.isfinite(ra) & np.isfinite(rb))
    scale = float(np.abs(np.where(finite, ra, 0)).max(initial=0.0))
    if ref_gap > 1e-9 * max(scale, 1.0):
        pytest.fail(f"property {name!r} fails on the float64 REFERENCE itself (gap {ref_gap:.3g}):"
                    f" the spec or the reference is wrong. case: {case_a.describe()}")
    if not np.array_equal(np.isfinite(ga), np.isfinite(gb)) or ga.shape != gb.shape:
        fail(f"property {name!r}: the two sides differ in shape or finiteness", target, stem,
              f"property-{name}", "y", case_a)
    from lmspec.spec._tolerance import FLOOR_ULPS, K, floor_for

    with np.errstate(invalid="ignore"):
        naive_err = float(np.abs(np.where(finite, na - ra, 0)).max(initial=0.0)
                          + np.abs(np.where(finite, nb - rb, 0)).max(initial=0.0))
    # each side may carry its own floor
    floor = 2 * floor_for(target.np_dtype, FLOOR_ULPS, scale, ma, mb)
    bound = K["output"] * naive_err + floor
    err = float(np.abs(np.where(finite, ga - gb, 0)).max(initial=0.0))
    _results.record_check(stem, target, f"property-{name}", "y", None)
    if not (err <= bound or (np.isnan(bound) and err == 0)):
        fail(f"property {name!r} violated: sides differ by {err:.3g} > bound {bound:.3g} "
              f"(= {K['output']:g} x naive errors {naive_err:.3g} + floor {floor:.3g})",
              target, stem, f"property-{name}", "y", case_a)


# ----------------------------------------------------------------------------- standard anatomy


def standard_tests(comp) -> tuple[Callable, Callable, Callable]:
    """The three tests every component has: forward and gradient over the spec's strategy,
    and the spec's error inputs. A test module binds them to ``test_forward``,
    ``test_backward`` and ``test_errors``; its own properties follow."""
    from hypothesis import given

    from lmspec.spec._strategies import seeds

    stem = comp.stem

    @given(case=comp.cases())
    def test_forward(target, case):
        check_forward(target, stem, case)

    @given(case=comp.cases(), seed=seeds())
    def test_backward(target, case, seed):
        check_backward(target, stem, case, seed)

    def test_errors(target):
        check_errors(target, stem)

    for fn in (test_forward, test_backward, test_errors):
        fn.__qualname__ = f"{stem}.{fn.__name__}"  # hypothesis seeds derandomized runs by it
    return test_forward, test_backward, test_errors
