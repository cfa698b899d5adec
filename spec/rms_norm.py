"""RMSNorm (Zhang & Sennrich, 2019), with the Gemma ``(1 + w)`` weight convention as a parameter."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, require, shape_of

EPSILONS = (1e-6, 1e-5, 1e-2, 1.0)


def rms_norm(x, weight=None, *, eps: float = 1e-6, weight_offset: float = 0.0):
    """Root-mean-square normalisation over the last axis.

    Shapes: ``x`` (..., D) with D >= 1; ``weight`` (D,) or None. Output: same shape and dtype
    as ``x``.

    Math (eps *inside* the root)::

        y = x / sqrt(mean(x**2, axis=-1) + eps) * (weight_offset + weight)

    ``weight=None`` means no scale (``weight_offset`` is then ignored). ``weight_offset=1.0``
    is Gemma's convention, where the stored weight is a residual around 1; Llama uses 0.0.
    Low-precision implementations are expected to accumulate the mean of squares in float32.

    Gradients: with respect to ``x`` and ``weight``.

    Rejected: ``x`` with no axis or an empty last axis; ``weight`` not of shape (D,);
    ``eps <= 0`` (ValueError, naming the argument).
    """
    check_args(x, weight, eps=eps, weight_offset=weight_offset)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(x, weight=None, *, eps: float = 1e-6, weight_offset: float = 0.0) -> None:
    xs = shape_of(x)
    require(len(xs) >= 1, ValueError, "x: expected shape (..., D), got a 0-d array")
    require(xs[-1] >= 1, ValueError, f"x: expected a non-empty last axis D >= 1, got shape {xs}")
    if weight is not None:
        ws = shape_of(weight)
        require(ws == (xs[-1],), ValueError, f"weight: expected shape ({xs[-1]},), got {ws}")
    require(eps > 0, ValueError, f"eps: expected eps > 0, got {eps!r}")


@st.composite
def _cases(draw) -> Case:
    lead = draw(S.leading_shapes())
    d = draw(S.sizes(S.FEATURE_SIZES, min_size=1))
    x = draw(S.float_arrays(lead + (d,)))
    weight = draw(st.none() | S.float_arrays((d,), styles=("normal", "uniform", "ties")))
    eps = draw(st.sampled_from(EPSILONS))
    offset = draw(st.sampled_from((0.0, 1.0)))
    return Case({"x": x, "weight": weight}, {"eps": eps, "weight_offset": offset})


def _bad(x_shape, w_shape, eps=1e-6):
    w = None if w_shape is None else np.ones(w_shape)
    return (lambda: ({"x": np.ones(x_shape), "weight": w}, {"eps": eps}))


COMPONENT = Component(
    stem="rms_norm",
    coverage={"weight": ("given", "absent"), "weight_offset": ("0.0", "1.0")},
    inputs=("x", "weight"),
    outputs=("y",),
    differentiable=("x", "weight"),
    cases=_cases,
    errors=(
        ErrorCase("weight of the wrong length", _bad((2, 4), (3,)), ValueError, r"weight"),
        ErrorCase("0-d x", _bad((), None), ValueError, r"\bx\b"),
        ErrorCase("empty last axis", _bad((2, 0), None), ValueError, r"\bx\b"),
        ErrorCase("non-positive eps", _bad((2, 4), (4,), eps=0.0), ValueError, r"eps"),
    ),
    summary="RMSNorm; eps inside the root; optional weight; Gemma 1+w offset",
)
