"""Inputs every check shares: rounding, cotangents, reference outputs and grads, magnitudes."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lmspec import reference
from lmspec.conformance._target import Target
from lmspec.spec import Case, component


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
