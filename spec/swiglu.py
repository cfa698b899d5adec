"""SwiGLU feed-forward (Shazeer, 2020): ``down(silu(x Wg) * (x Wu))``, as in Llama."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, require, shape_of


def swiglu(x, w_gate, w_up, w_down):
    """Gated feed-forward with the SiLU gate.

    Shapes (weights are stored ``(in, out)``, i.e. the math's ``x @ W``; torch.nn.Linear stores
    the transpose): ``x`` (..., D), ``w_gate`` (D, F), ``w_up`` (D, F), ``w_down`` (F, D_out).
    Output (..., D_out) in the dtype of ``x``.

    Math::

        h = silu(x @ w_gate) * (x @ w_up),   silu(a) = a * sigmoid(a)
        y = h @ w_down

    Matrix products accumulate in at least float32. Gradients: with respect to all four inputs.

    Rejected (ValueError naming the argument): mismatched inner dimensions.
    """
    check_args(x, w_gate, w_up, w_down)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(x, w_gate, w_up, w_down, **_params) -> None:
    xs, gs, us, ds = shape_of(x), shape_of(w_gate), shape_of(w_up), shape_of(w_down)
    require(len(xs) >= 1, ValueError, "x: expected shape (..., D), got a 0-d array")
    require(len(gs) == 2 and gs[0] == xs[-1], ValueError,
            f"w_gate: expected shape ({xs[-1]}, F), got {gs}")
    require(us == gs, ValueError, f"w_up: expected the shape of w_gate {gs}, got {us}")
    require(len(ds) == 2 and ds[0] == gs[1], ValueError,
            f"w_down: expected shape ({gs[1]}, D_out), got {ds}")


@st.composite
def ffn_cases(draw) -> Case:
    lead = draw(S.leading_shapes())
    d = draw(S.sizes((1, 3, 8, 16, 24), min_size=1))
    f = draw(S.sizes((1, 2, 5, 16, 40), min_size=1))
    d_out = draw(st.sampled_from((d, 3)))
    w = dict(scales=(0.1, 0.3, 1.0), styles=("normal", "uniform", "ties"))
    arrays = {
        "x": draw(S.float_arrays(lead + (d,), scales=(0.1, 1.0, 4.0))),
        "w_gate": draw(S.float_arrays((d, f), **w)),
        "w_up": draw(S.float_arrays((d, f), **w)),
        "w_down": draw(S.float_arrays((f, d_out), **w)),
    }
    return Case(arrays, {})


def _bad_down():
    return {"x": np.ones((2, 4)), "w_gate": np.ones((4, 6)), "w_up": np.ones((4, 6)),
            "w_down": np.ones((5, 4))}, {}


COMPONENT = Component(
    stem="swiglu",
    inputs=("x", "w_gate", "w_up", "w_down"),
    outputs=("y",),
    differentiable=("x", "w_gate", "w_up", "w_down"),
    cases=ffn_cases,
    errors=(ErrorCase("w_down inner dimension", _bad_down, ValueError, r"w_down"),),
    summary="SwiGLU FFN: down(silu(x Wg) * (x Wu)); weights (in, out)",
)
