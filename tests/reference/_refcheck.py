"""Helpers for testing the NumPy reference against independent oracles (finite differences)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings

from lmspec import reference as R
from lmspec.spec import Case, component

EPS64 = float(np.finfo(np.float64).eps)

# Finite-difference budget: a few examples per stem keep tests/reference under two minutes.
FD_SETTINGS = settings(
    max_examples=12,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
# Tolerance against float32 library code (HF casts to float32 internally): a few float32 ulp.
F32_RTOL = 2e-6


def call(stem: str, arrays: Mapping[str, Any], params: Mapping[str, Any]):
    """The reference forward with arrays passed positionally in the spec's input order."""
    names = component(stem).inputs
    return getattr(R, stem)(*(arrays[n] for n in names), **params)


def call_vjp(stem: str, cot, arrays: Mapping[str, Any], params: Mapping[str, Any]) -> dict:
    names = component(stem).inputs
    return getattr(R, f"{stem}_vjp")(cot, *(arrays[n] for n in names), **params)


def as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def contract(outs: tuple, cots: tuple, absolute: bool = False) -> float:
    """sum(cot * out) over the finite outputs (-inf lse rows carry no derivative)."""
    total = 0.0
    for o, c in zip(outs, cots):
        o = np.asarray(o, np.float64)
        fin = np.isfinite(o)
        prod = np.abs(o) * np.abs(c) if absolute else o * c
        total += float(np.sum(np.where(fin, prod, 0.0)))
    return total


def _elements(size: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(size) if size <= limit else rng.choice(size, limit, replace=False)


def fd_check(
    stem: str,
    case: Case,
    steps: Mapping[str, float],
    *,
    seed: int = 0,
    limit: int = 24,
    rtol: float = 1e-5,
) -> None:
    """Compare ``<stem>_vjp`` with central differences of L = sum(cot * out), element-wise.

    ``steps`` gives the step h per differentiable input; the realised step (x + h) - x is used,
    and the roundoff of L (about eps * sum|cot * out| / h) is part of the bound.
    """
    arrays, params = dict(case.arrays), dict(case.params)
    outs = as_tuple(call(stem, arrays, params))
    rng = np.random.default_rng(seed)
    cots = tuple(rng.standard_normal(np.shape(o)) for o in outs)
    grads = call_vjp(stem, cots if len(cots) > 1 else cots[0], arrays, params)
    labs = contract(outs, cots, absolute=True)
    for name in component(stem).differentiable:
        x = arrays[name]
        if x is None:
            assert grads[name] is None, f"{stem}: gradient for absent {name} should be None"
            continue
        g = np.asarray(grads[name], np.float64)
        assert g.shape == x.shape, f"{stem}: d{name} shape {g.shape} != {x.shape}"
        assert np.all(np.isfinite(g)), f"{stem}: d{name} not finite: {g}"
        h = steps[name]
        idx = _elements(x.size, limit, rng)
        fd = np.array([_central(stem, arrays, params, name, int(i), h, cots) for i in idx])
        an = g.reshape(-1)[idx]
        scale = max(float(np.max(np.abs(an), initial=0.0)), float(np.max(np.abs(fd), initial=0.0)))
        tol = rtol * scale + 10 * EPS64 * (labs + 1e-300) / h
        err = np.abs(fd - an)
        assert np.all(err <= tol), (
            f"{stem}: d{name} vs finite differences, worst {float(err.max()):.3e} > "
            f"{tol:.3e} at flat {int(idx[err.argmax()])}: vjp {an[err.argmax()]!r} "
            f"fd {fd[err.argmax()]!r}; {case.describe()}"
        )


def _central(stem, arrays, params, name, i, h, cots) -> float:
    x = arrays[name]
    xp, xm = x.copy(), x.copy()
    xp.flat[i] += h
    xm.flat[i] -= h
    hp, hm = xp.flat[i] - x.flat[i], x.flat[i] - xm.flat[i]
    assert hp > 0 and hm > 0, f"step {h} vanishes at {x.flat[i]}"
    lp = contract(as_tuple(call(stem, {**arrays, name: xp}, params)), cots)
    lm = contract(as_tuple(call(stem, {**arrays, name: xm}, params)), cots)
    return (lp - lm) / (hp + hm)


def max_abs(a) -> float:
    a = np.asarray(a, np.float64)
    return float(np.max(np.abs(a), initial=0.0))


def assert_close(got, want, *, rtol: float = 1e-12, atol: float = 1e-12, what: str = "") -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def rng_case(
    shapes: Mapping[str, tuple[int, ...] | None],
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    scale: float = 1.0,
    extra: Mapping[str, Any] | None = None,
) -> Case:
    """An explicit Case with standard-normal float64 arrays (None where the shape is None)."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, Any] = {
        k: None if s is None else rng.standard_normal(s) * scale for k, s in shapes.items()
    }
    arrays.update(extra or {})
    return Case(arrays, dict(params or {}))


Step = Callable[[Case], Mapping[str, float]]
