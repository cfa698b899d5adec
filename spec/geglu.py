"""GeGLU feed-forward (Shazeer, 2020): ``down(gelu(x Wg) * (x Wu))``, as in Gemma."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec._contract import Case, Component, ErrorCase, require
from lmspec.spec.swiglu import check_args as _check_shapes
from lmspec.spec.swiglu import ffn_cases

APPROXIMATIONS = ("tanh", "none")


def geglu(x, w_gate, w_up, w_down, *, approximate: str = "tanh"):
    """Gated feed-forward with the GELU gate; shapes and layout as ``swiglu``.

    Math::

        y = (gelu(x @ w_gate) * (x @ w_up)) @ w_down
        gelu_none(a) = a/2 * (1 + erf(a / sqrt(2)))
        gelu_tanh(a) = a/2 * (1 + tanh(sqrt(2/pi) * (a + 0.044715 a**3)))

    ``approximate="tanh"`` is Gemma's ``gelu_pytorch_tanh``; ``"none"`` is the exact erf form.

    Rejected: shape errors as ``swiglu``; an unknown ``approximate`` (ValueError).
    """
    check_args(x, w_gate, w_up, w_down, approximate=approximate)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(x, w_gate, w_up, w_down, *, approximate: str = "tanh") -> None:
    _check_shapes(x, w_gate, w_up, w_down)
    require(approximate in APPROXIMATIONS, ValueError,
            f"approximate: expected one of {APPROXIMATIONS}, got {approximate!r}")


@st.composite
def _cases(draw) -> Case:
    base = draw(ffn_cases())
    return Case(base.arrays, {"approximate": draw(st.sampled_from(APPROXIMATIONS))})


def _bad_approx():
    return {"x": np.ones((2, 4)), "w_gate": np.ones((4, 6)), "w_up": np.ones((4, 6)),
            "w_down": np.ones((6, 4))}, {"approximate": "sigmoid"}


COMPONENT = Component(
    stem="geglu",
    coverage={"approximate": ("none", "tanh")},
    inputs=("x", "w_gate", "w_up", "w_down"),
    outputs=("y",),
    differentiable=("x", "w_gate", "w_up", "w_down"),
    cases=_cases,
    errors=(ErrorCase("unknown approximation", _bad_approx, ValueError, r"approximate"),),
    summary="GeGLU FFN: down(gelu(x Wg) * (x Wu)); tanh or erf gelu",
)
