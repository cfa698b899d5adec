"""The one assertion path of the conformance suite: run a backend and the reference on the same
case, judge every output and gradient by the tolerance policy, record the result, and on
failure say how to reproduce it in one line."""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lmspec import reference
from lmspec.backends import Backend, numpy_dtype
from lmspec.conformance import _results
from lmspec.spec import Case, component
from lmspec.spec._tolerance import Verdict, judge

NOT_IMPLEMENTED = "not implemented"


@dataclass(frozen=True)
class Target:
    """A backend in one dtype: what a conformance test is parametrized over."""

    backend: Backend
    dtype: str

    @property
    def np_dtype(self) -> np.dtype:
        return numpy_dtype(self.dtype)

    def __str__(self) -> str:
        return f"{self.backend.name}-{self.dtype}"


# ----------------------------------------------------------------------------- inputs


def rounded(case: Case, stem: str, dtype: np.dtype) -> dict[str, np.ndarray | None]:
    """The case's float inputs rounded to ``dtype`` and back to float64: what everyone sees.

    Values beyond the dtype's range saturate to its largest finite value (1e30 logits become
    65504 in float16), so that every backend is given finite inputs.
    """
    import ml_dtypes

    ints = component(stem).integer_inputs
    top = float(ml_dtypes.finfo(dtype).max)
    def saturate(a: np.ndarray) -> np.ndarray:  # finite values only: -inf stays -inf
        a = np.asarray(a, np.float64)
        return np.where(np.isfinite(a), np.clip(a, -top, top), a).astype(dtype).astype(np.float64)

    return {n: (a if a is None or n in ints else saturate(a)) for n, a in case.arrays.items()}


def _abs_inputs(stem: str, arrays: Mapping) -> dict:
    ints = component(stem).integer_inputs
    return {n: (a if a is None or n in ints else np.abs(a)) for n, a in arrays.items()}


def _input_scale(stem: str, arrays: Mapping, extra: Sequence = ()) -> float:
    ints = component(stem).integer_inputs
    vals = [a for n, a in arrays.items() if a is not None and n not in ints] + list(extra)
    return max((float(np.abs(a).max(initial=0.0)) for a in vals), default=0.0)


def magnitudes(stem: str, arrays: Mapping, params: Mapping, cts: Sequence | None = None):
    """The scale at which a correct implementation's rounding errors live, per output (or per
    gradient when ``cts`` is given): the reference's own ``<stem>_magnitude`` /
    ``<stem>_vjp_magnitude`` where it defines one (an error model the generic rule misses),
    else the reference on the absolute values of its inputs (the forward-error scale of sums),
    or the inputs' own scale where that is zero."""
    absd = _abs_inputs(stem, arrays)
    fallback = _input_scale(stem, arrays, cts or ())
    hook = getattr(importlib.import_module(f"lmspec.reference.{stem}"),
                   f"{stem}_magnitude" if cts is None else f"{stem}_vjp_magnitude", None)
    with np.errstate(all="ignore"):
        if hook is not None and cts is None:
            return [_mag(o, fallback) for o in _tuple(hook(**arrays, **params))]
        if hook is not None:
            grads = hook(cts[0] if len(cts) == 1 else tuple(cts), **arrays, **params)
            return {k: _mag(v, fallback) for k, v in grads.items() if v is not None}
        if cts is None:
            outs = reference_outputs(stem, absd, params)
            return [_mag(o, fallback) for o in outs]
        grads = reference_grads(stem, [np.abs(c) for c in cts], absd, params)
        return {k: _mag(v, fallback) for k, v in grads.items() if v is not None}


def _mag(a, fallback: float) -> float:
    a = np.asarray(a, np.float64)
    m = float(np.abs(np.where(np.isfinite(a), a, 0.0)).max(initial=0.0))
    return m if m > 0 else fallback


def to_native(target: Target, stem: str, arrays: Mapping[str, np.ndarray | None]) -> dict:
    ints = component(stem).integer_inputs
    return {n: target.backend.asarray(a, None if n in ints else target.dtype)
            for n, a in arrays.items()}


def cotangents_for(stem: str, outputs: Sequence[np.ndarray], seed: int, dtype: np.dtype) -> list:
    """Random cotangents, rounded to the dtype of the output they belong to."""
    rng = np.random.default_rng(seed)
    wide = component(stem).wide_outputs
    names = component(stem).outputs
    return [rng.standard_normal(np.shape(o)).astype(np.float32 if n in wide else dtype)
            .astype(np.float64) for n, o in zip(names, outputs)]


def _reference_fn(stem: str, vjp: bool = False) -> Callable[..., Any]:
    return getattr(reference, f"{stem}_vjp" if vjp else stem)


def _tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


# float64 has no lower-precision evaluation to compare with: its naive error is modelled as the
# float32 naive error scaled by the ratio of unit roundoffs (2**-53 / 2**-24), so that a float64
# backend that merely sums in another order is not held to a zero-width bound.
_F64_FROM_F32 = 2.0**-29


def _modelled_f64(ref: Sequence, naive32: Sequence) -> tuple:
    with np.errstate(invalid="ignore"):
        return tuple(None if r is None else np.where(
            np.isfinite(r), r + (np.asarray(n, np.float64) - r) * _F64_FROM_F32, r)
            for r, n in zip(ref, naive32))


def reference_outputs(stem: str, arrays: Mapping, params: Mapping, dtype=None) -> tuple:
    """Reference outputs in float64, or naive in ``dtype``."""
    ints = component(stem).integer_inputs
    if dtype is not None and np.dtype(dtype) == np.float64:
        return _modelled_f64(reference_outputs(stem, arrays, params),
                             reference_outputs(stem, arrays, params, np.float32))
    if dtype is None:
        return _tuple(_reference_fn(stem)(**arrays, **params))
    cast = {n: (a if a is None or n in ints else a.astype(dtype)) for n, a in arrays.items()}
    with reference.computing_in(dtype):
        return _tuple(_reference_fn(stem)(**cast, **params))


def reference_grads(stem: str, cts: Sequence, arrays: Mapping, params: Mapping,
                    dtype=None) -> dict:
    ints = component(stem).integer_inputs
    fn = _reference_fn(stem, vjp=True)
    if dtype is not None and np.dtype(dtype) == np.float64:
        exact = reference_grads(stem, cts, arrays, params)
        rough = reference_grads(stem, cts, arrays, params, np.float32)
        names = [n for n in exact if exact[n] is not None]
        return dict(zip(names, _modelled_f64([exact[n] for n in names],
                                             [rough[n] for n in names])))
    if dtype is None:
        return fn(cts[0] if len(cts) == 1 else tuple(cts), **arrays, **params)
    cast = {n: (a if a is None or n in ints else a.astype(dtype)) for n, a in arrays.items()}
    cts = [np.asarray(c).astype(dtype) for c in cts]
    with reference.computing_in(dtype):
        return fn(cts[0] if len(cts) == 1 else tuple(cts), **cast, **params)


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
    require_impl(target, stem)
    comp = component(stem)
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
        lines.append(f"rerun: lmspec conform --backend {target.backend.name} --component {stem} "
                     f"--dtype {target.dtype} -k '{node.split('::')[-1]}'")
    pytest.fail("\n  ".join(lines), pytrace=False)


# ----------------------------------------------------------------------------- saved cases


def _encode(v: Any) -> Any:
    if hasattr(v, "__dataclass_fields__"):
        return {"__dataclass__": f"{type(v).__module__}.{type(v).__qualname__}",
                **{k: _encode(getattr(v, k)) for k in v.__dataclass_fields__}}
    return v


def _decode(v: Any) -> Any:
    if isinstance(v, dict) and "__dataclass__" in v:
        import importlib

        mod, _, cls = v["__dataclass__"].rpartition(".")
        if not mod.startswith("lmspec."):
            raise ValueError(f"case file: refusing to build {v['__dataclass__']!r}")
        fields = {k: _decode(x) for k, x in v.items() if k != "__dataclass__"}
        return getattr(importlib.import_module(mod), cls)(**fields)
    return v


def save_case(case: Case, stem: str, target: Target, test: str, extra: Mapping[str, Any]) -> Path:
    """Write the failing case as .npz (arrays, no pickle) + .json (everything else)."""
    out = _results.failures_dir()
    out.mkdir(parents=True, exist_ok=True)
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{stem}-{test}-{target.backend.name}-{target.dtype}")
    path = out / f"{base}.json"
    arrays = {n: a for n, a in case.arrays.items() if a is not None}
    np.savez(out / f"{base}.npz", **arrays)
    meta = {"stem": stem, "test": test, "backend": target.backend.name, "dtype": target.dtype,
            "none_arrays": [n for n, a in case.arrays.items() if a is None],
            "params": {k: _encode(v) for k, v in case.params.items()}, **extra}
    path.write_text(json.dumps(meta, indent=1))
    return path


def load_case(path: str | Path) -> tuple[dict, Case]:
    path = Path(path)
    meta = json.loads(path.read_text())
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
        arrays: dict[str, Any] = {n: z[n] for n in z.files}
    arrays.update({n: None for n in meta["none_arrays"]})
    order = component(meta["stem"]).inputs
    case = Case({n: arrays.get(n) for n in order},
                {k: _decode(v) for k, v in meta["params"].items()})
    return meta, case


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
    finite = np.isfinite(ra) & np.isfinite(rb)
    scale = float(np.abs(np.where(finite, ra, 0)).max(initial=0.0))
    ref_gap = float(np.abs(np.where(finite, ra - rb, 0)).max(initial=0.0))
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
