"""The component contract: what every spec module declares, as data the harness can read."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Case:
    """One concrete input to a component.

    ``arrays`` holds the array arguments: floating ones in float64 (the harness rounds them to
    the dtype under test before anyone sees them), integer ones (ids, positions, targets,
    segment ids) in int64. ``params`` holds the static (non-array) arguments.
    """

    arrays: Mapping[str, np.ndarray | None]
    params: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # hypothesis prints this for a falsifying example
        return f"Case<{self.describe()}>"

    def describe(self) -> str:
        shapes = ", ".join(
            f"{k}={'None' if v is None else tuple(v.shape)}" for k, v in self.arrays.items()
        )
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"shapes({shapes}) params({params})" if params else f"shapes({shapes})"


@dataclass(frozen=True)
class ErrorCase:
    """A bad input that every implementation must reject.

    ``build`` returns (arrays, params) in float64/int64 NumPy; the harness converts the arrays
    to the backend's own type. The raised exception must be an instance of ``exception`` and
    its message must match ``match`` (a regex that names the offending argument).
    """

    name: str
    build: Callable[[], tuple[dict[str, Any], dict[str, Any]]]
    exception: type[BaseException]
    match: str

    def message_ok(self, err: BaseException) -> bool:
        return re.search(self.match, str(err)) is not None


@dataclass(frozen=True)
class Component:
    """The machine-readable part of a spec module.

    - ``inputs``: the array arguments, in signature order.
    - ``integer_inputs``: those that hold integers (never cast to the float dtype under test).
    - ``outputs``: names of the outputs, in order (a single output is returned bare).
    - ``differentiable``: inputs the VJP is taken with respect to (empty: no backward).
    - ``cases``: a zero-argument callable returning the hypothesis strategy of valid Cases.
    - ``errors``: bad inputs and how they must be rejected.
    - ``neg_inf_outputs``: outputs where -inf is a legitimate exact value (sdpa's lse on a
      fully masked row); their -inf pattern is compared exactly, the rest by tolerance.
    - ``wide_outputs``: outputs returned in float32 or wider whatever the input dtype (lse,
      a loss); their cotangents are float32.
    - ``features``: the classes of input that change the math and are not a parameter's value
      (sdpa's head grouping), ``case -> {feature: value}``; see spec/_coverage.py.
    - ``coverage``: the values the generic tests must draw, ``{feature: (value, ...)}`` (as
      strings), each in at least spec._coverage.MIN_SHARE of the examples.
    """

    stem: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    cases: Callable[[], Any]
    differentiable: tuple[str, ...] = ()
    integer_inputs: tuple[str, ...] = ()
    errors: tuple[ErrorCase, ...] = ()
    neg_inf_outputs: tuple[str, ...] = ()
    wide_outputs: tuple[str, ...] = ()
    summary: str = ""
    features: Callable[[Case], Mapping[str, Any]] | None = None
    coverage: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def float_inputs(self) -> tuple[str, ...]:
        return tuple(n for n in self.inputs if n not in self.integer_inputs)


def require(cond: bool, exc: type[BaseException], msg: str) -> None:
    """Raise ``exc(msg)`` unless ``cond``: the one-line argument check every spec uses."""
    if not cond:
        raise exc(msg)


def shape_of(a: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in a.shape)


def is_integer_array(a: Any) -> bool:
    """True for integer arrays of NumPy, torch, JAX (anything with a dtype named like one)."""
    name = str(getattr(a, "dtype", "")).replace("torch.", "")
    return name.startswith(("int", "uint"))


def host(a: Any) -> np.ndarray:
    """A NumPy, torch or JAX array as NumPy on the host (bfloat16 tensors as float32)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu()
        return a.float().numpy() if str(a.dtype) == "torch.bfloat16" else a.numpy()
    return np.asarray(a)
