"""Softmax over one axis, stable for any finite input (max subtraction)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, require, shape_of

# Logit scales up to the 1e30 range: a kernel that skips the max subtraction overflows.
LOGIT_SCALES = (1e-3, 1.0, 30.0, 1e4, 1e30)


def softmax(x, *, axis: int = -1):
    """``y = exp(x - max(x)) / sum(exp(x - max(x)))`` along ``axis``.

    Shapes: ``x`` any shape with at least one axis; ``axis`` in [-ndim, ndim). Output: the
    shape and dtype of ``x``. Domain: finite inputs of any magnitude the dtype can hold
    (±1e30 included in float32/bfloat16); an empty reduction axis gives an empty output.

    Gradient: ``dx = y * (dy - sum(dy * y, axis))``.

    Rejected: a 0-d ``x``, an ``axis`` out of range (ValueError naming ``axis``).
    """
    check_args(x, axis=axis)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(x, *, axis: int = -1) -> None:
    xs = shape_of(x)
    require(len(xs) >= 1, ValueError, "x: expected at least one axis, got a 0-d array")
    require(-len(xs) <= axis < len(xs), ValueError,
            f"axis: expected an axis in [{-len(xs)}, {len(xs)}), got {axis}")


@st.composite
def logit_cases(draw) -> Case:
    lead = draw(S.leading_shapes())
    n = draw(S.sizes(S.FEATURE_SIZES + (0,), min_size=0))
    shape = lead + (n,)
    x = draw(S.float_arrays(shape, scales=LOGIT_SCALES))
    axis = draw(st.sampled_from((-1, len(shape) - 1) + ((0,) if len(shape) > 1 else ())))
    return Case({"x": x}, {"axis": axis})


def _bad_axis():
    return {"x": np.ones((2, 3))}, {"axis": 2}


COMPONENT = Component(
    stem="softmax",
    coverage={"axis": ("-1", "0")},
    inputs=("x",),
    outputs=("y",),
    differentiable=("x",),
    cases=logit_cases,
    errors=(ErrorCase("axis out of range", _bad_axis, ValueError, r"axis"),),
    summary="softmax along an axis; max-subtracted; finite inputs up to 1e30",
)
