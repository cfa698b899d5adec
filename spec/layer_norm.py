"""LayerNorm (Ba et al., 2016) over the last axis, biased variance, optional affine."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, require, shape_of


def layer_norm(x, weight=None, bias=None, *, eps: float = 1e-5, weight_offset: float = 0.0):
    """Layer normalisation over the last axis.

    Shapes: ``x`` (..., D) with D >= 1; ``weight`` and ``bias`` (D,) or None. Output: the shape
    and dtype of ``x``.

    Math (population variance, eps inside the root, as torch.nn.LayerNorm)::

        mu  = mean(x, -1);  var = mean((x - mu)**2, -1)
        y   = (x - mu) / sqrt(var + eps) * (weight_offset + weight) + bias

    A missing weight means scale 1 (``weight_offset`` is then ignored); a missing bias means 0.

    Gradients: with respect to ``x``, ``weight`` and ``bias``.

    Rejected (ValueError, naming the argument): ``x`` 0-d or with an empty last axis;
    ``weight``/``bias`` not of shape (D,); ``eps <= 0``.
    """
    check_args(x, weight, bias, eps=eps, weight_offset=weight_offset)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(x, weight=None, bias=None, *, eps: float = 1e-5, weight_offset: float = 0.0):
    xs = shape_of(x)
    require(len(xs) >= 1, ValueError, "x: expected shape (..., D), got a 0-d array")
    require(xs[-1] >= 1, ValueError, f"x: expected a non-empty last axis D >= 1, got shape {xs}")
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None:
            require(shape_of(a) == (xs[-1],), ValueError,
                    f"{name}: expected shape ({xs[-1]},), got {shape_of(a)}")
    require(eps > 0, ValueError, f"eps: expected eps > 0, got {eps!r}")


@st.composite
def _cases(draw) -> Case:
    lead = draw(S.leading_shapes())
    d = draw(S.sizes(S.FEATURE_SIZES, min_size=1))
    x = draw(S.float_arrays(lead + (d,)))
    aff = S.float_arrays((d,), styles=("normal", "uniform", "ties"))
    return Case(
        {"x": x, "weight": draw(st.none() | aff), "bias": draw(st.none() | aff)},
        {"eps": draw(st.sampled_from((1e-5, 1e-2, 1.0))),
         "weight_offset": draw(st.sampled_from((0.0, 1.0)))},
    )


COMPONENT = Component(
    stem="layer_norm",
    coverage={"weight": ("given", "absent"), "bias": ("given", "absent"),
              "weight_offset": ("0.0", "1.0")},
    inputs=("x", "weight", "bias"),
    outputs=("y",),
    differentiable=("x", "weight", "bias"),
    cases=_cases,
    errors=(
        ErrorCase("bias of the wrong length",
                  lambda: ({"x": np.ones((2, 4)), "weight": None, "bias": np.ones(5)}, {}),
                  ValueError, r"bias"),
        ErrorCase("non-positive eps",
                  lambda: ({"x": np.ones((2, 4)), "weight": None, "bias": None}, {"eps": -1.0}),
                  ValueError, r"eps"),
    ),
    summary="LayerNorm; biased variance; optional weight and bias; 1+w offset",
)
