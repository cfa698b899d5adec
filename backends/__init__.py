"""Backends: how lmspec finds an implementation and talks to it.

A backend is a Python module (or any object with these attributes) that exports:

- ``NAME``: str, and ``DTYPES``: the float dtype names it runs (subset of ``"float64"``,
  ``"float32"``, ``"bfloat16"``, ``"float16"``).
- ``asarray(a: np.ndarray, dtype: str | None)``: a NumPy array to the backend's own array.
  Floating arrays are converted to ``dtype``; integer arrays keep an integer dtype
  (``dtype`` is then None).
- ``to_numpy(t) -> np.ndarray``: exact conversion back (bfloat16 -> ``ml_dtypes.bfloat16``).
- one callable per component, named after the spec stem, with the spec's signature, taking
  and returning the backend's arrays (``sdpa`` returns a tuple ``(out, lse)``).
- for gradients, either ``vjp(fn, arrays, params, cotangents, wrt) -> dict`` (generic:
  autograd, jax.vjp) or per stem ``<stem>_vjp(cotangent, *inputs, **params) -> dict``.
  ``cotangents`` is a tuple, one per output; ``wrt`` names the differentiable inputs; the
  result maps each name in ``wrt`` to its gradient (None for an input that was None).
- optionally ``UNSUPPORTED``: a set of ``(stem, dtype)`` pairs it does not run (shown as
  not implemented, never as passed).

A backend is selected by name: ``reference`` (built in), a name registered under the
entry-point group ``lmspec.backends`` (ours register this way too), or a dotted import path
(``mypkg.my_backend``) or ``module:attribute``, so a package lmspec has never seen can be
tested without touching it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ENTRY_POINT_GROUP = "lmspec.backends"


def _triton_interpreter_without_gpu() -> None:
    """With no CUDA device, Triton can only run in its interpreter, and Triton fixes that mode
    when it is first imported (its own tl.* helpers are decorated then; transformers imports it
    early). So decide before any backend loads: no NVIDIA device node -> TRITON_INTERPRET=1,
    unless the user has set it either way."""
    if "TRITON_INTERPRET" not in os.environ and not any(Path("/dev").glob("nvidia[0-9]*")):
        os.environ["TRITON_INTERPRET"] = "1"


_triton_interpreter_without_gpu()
FLOAT_DTYPES = ("float64", "float32", "bfloat16", "float16")


class BackendUnavailable(RuntimeError):
    """The backend's library is not installed (or cannot run here); the message says why."""


class NotImplementedByBackend(LookupError):
    """The backend does not provide this component (or not in this dtype)."""


def numpy_dtype(name: str) -> np.dtype:
    """NumPy dtype for a dtype name, bfloat16 through ml_dtypes."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if name not in FLOAT_DTYPES:
        raise ValueError(f"dtype: expected one of {FLOAT_DTYPES}, got {name!r}")
    return np.dtype(name)


@dataclass(frozen=True)
class Backend:
    """A loaded backend: uniform calls over whatever module implements it."""

    name: str
    impl: Any
    # what ``load`` was given (a registered name, an entry point or an import path): the
    # string that loads this backend again, for the one-line reruns of failures
    source: str = ""

    @property
    def load_name(self) -> str:
        return self.source or self.name

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(getattr(self.impl, "DTYPES", ("float32",)))

    def has(self, stem: str, dtype: str | None = None) -> bool:
        if not callable(getattr(self.impl, stem, None)):
            return False
        if dtype is None:
            return True
        return dtype in self.dtypes and (stem, dtype) not in getattr(self.impl, "UNSUPPORTED", ())

    def has_vjp(self, stem: str) -> bool:
        return callable(getattr(self.impl, f"{stem}_vjp", None)) or callable(
            getattr(self.impl, "vjp", None))

    def fn(self, stem: str) -> Callable[..., Any]:
        f = getattr(self.impl, stem, None)
        if not callable(f):
            raise NotImplementedByBackend(f"{self.name} does not implement {stem}")
        return f

    def asarray(self, a: np.ndarray | None, dtype: str | None) -> Any:
        if a is None:
            return None
        return self.impl.asarray(a, dtype)

    def to_numpy(self, t: Any) -> np.ndarray:
        return np.asarray(self.impl.to_numpy(t))

    def call(self, stem: str, arrays: Mapping[str, Any], params: Mapping[str, Any]) -> tuple:
        """Run a component on native arrays; always returns a tuple of outputs."""
        out = self.fn(stem)(**arrays, **params)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def vjp(self, stem: str, arrays: Mapping[str, Any], params: Mapping[str, Any],
            cotangents: Sequence[Any], wrt: Sequence[str]) -> dict[str, Any]:
        per_stem = getattr(self.impl, f"{stem}_vjp", None)
        if callable(per_stem):
            ct = cotangents[0] if len(cotangents) == 1 else tuple(cotangents)
            return dict(per_stem(ct, **arrays, **params))
        generic = getattr(self.impl, "vjp", None)
        if not callable(generic):
            raise NotImplementedByBackend(f"{self.name} has no gradient for {stem}")
        return dict(generic(self.fn(stem), dict(arrays), dict(params), tuple(cotangents),
                            tuple(wrt)))


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available() -> tuple[str, ...]:
    """Names that ``load`` accepts without a dotted path: reference plus registered ones."""
    return ("reference", *sorted(_entry_points()))


@cache
def load(name: str) -> Backend:
    """Load a backend by name, entry point or dotted import path.

    Raises ``BackendUnavailable`` with a one-line reason when its library is missing, and
    ``ValueError`` for a name that is none of the three.
    """
    if name == "reference":
        from lmspec.backends import _reference_backend

        return Backend("reference", _reference_backend)
    eps = _entry_points()
    target = eps[name].value if name in eps else name
    if name not in eps and "." not in name and ":" not in name:
        raise ValueError(
            f"backend: unknown name {name!r}; expected one of {', '.join(available())}, "
            "a dotted import path to a module, or 'module:attribute'")
    module_name = target.split(":")[0]
    try:
        module: ModuleType = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name) and name not in eps:
            raise ValueError(f"backend: cannot import {module_name!r} ({e})") from e
        raise BackendUnavailable(
            f"backend {name!r} needs {e.name!r}, which is not installed") from e
    impl = getattr(module, target.split(":")[1]) if ":" in target else module
    return Backend(getattr(impl, "NAME", name), impl, name)
