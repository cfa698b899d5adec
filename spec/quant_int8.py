"""Symmetric INT8 quantization, absmax per channel or per token (LLM.int8(), SmoothQuant W8A8)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, require
from lmspec.spec._quant import TINY_ODDS, check_float_array, tiny_slices

QMAX = 127


def quant_int8(x, *, axis: int = -1):
    """Symmetric absmax INT8 quantization with one float32 scale per slice along ``axis``.

    Shapes: ``x`` (...) floating, at least one axis. Outputs: ``codes`` int8 of ``x``'s shape;
    ``scales`` float32 of ``x``'s shape with ``axis`` removed (one scale per slice reduced over
    ``axis``). For a weight (out, in), ``axis=-1`` gives one scale per output channel (row);
    for activations (N, D), ``axis=-1`` gives one scale per token (dynamic per-token scaling).

    Math, per slice along ``axis``::

        amax   = max |x|                                 (exact)
        scale  = fl32(amax / 127)                        (the exact quotient rounded once)
        scale  = 1   where that is 0 (amax == 0, or amax < 127 * 2**-150 underflows)
        codes  = clip(round_half_even(x / scale), -127, 127)

    where ``x / scale`` is the exact quotient of the input value (in its own dtype) by the
    float32 scale. The grid is symmetric: **-128 is never used** (so that negation is exact and
    the int8 x int8 -> int32 product of two codes is symmetric). When the scale is a normal
    float32 the clip binds only at ``|x| == amax`` (where the quotient is 127 within a float32
    rounding); when it is subnormal (``amax < 127 * 2**-126``, about 1.5e-36) its rounding is
    coarse (2**-149 absolute, up to a third of the scale for a scale of 1 to 2 ulps), the
    quotient of every element near amax can pass 127 (float32 ``[[2.31e-43]]``: scale
    2**-149, quotient 165) and the clip is what keeps the code in range: 127, never a
    wrapped -91. Dequantization is
    ``codes * scale`` (``lmspec.reference.dequant_int8``); an all-zero slice dequantizes to
    zeros with scale 1. Inputs are finite and ``|x| <= float32 max``; non-finite inputs are
    outside the domain (not checked).

    Low-precision inputs (bfloat16, float16) are quantized from their exact values; an
    implementation computes the quotient in float32 (or wider). Codes are compared exactly,
    except where ``x / scale`` lies within ``spec._quant.QUOTIENT_MARGIN`` (relative) of a
    ``k + 0.5`` boundary, where either neighbour is accepted; midpoints that are exact in
    float32 round to even (2.5 -> 2, -3.5 -> -4).

    Rejected: integer ``x`` (TypeError); a 0-d ``x`` or ``axis`` outside [-ndim, ndim)
    (ValueError, naming the argument).
    """
    check_args(x, axis=axis)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(x, *, axis: int = -1) -> None:
    shape = check_float_array("x", x)
    require(isinstance(axis, (int, np.integer)) and not isinstance(axis, bool), TypeError,
            f"axis: expected an int, got {axis!r}")
    require(-len(shape) <= axis < len(shape), ValueError,
            f"axis: expected an axis in [-{len(shape)}, {len(shape)}) of x's shape {shape}, "
            f"got {axis}")


@st.composite
def _cases(draw) -> Case:
    lead = draw(S.leading_shapes())
    d = draw(S.sizes(S.FEATURE_SIZES))
    x = draw(S.float_arrays(lead + (d,)))
    axis = draw(st.integers(-len(lead) - 1, len(lead)))
    if draw(st.integers(0, TINY_ODDS - 1)) == 0:  # subnormal scales: the clip binds
        x = tiny_slices(x, QMAX, draw(S.seeds()), axis)
    return Case({"x": x}, {"axis": axis})


def _bad(x, axis=-1):
    return lambda: ({"x": x}, {"axis": axis})


COMPONENT = Component(
    stem="quant_int8",
    inputs=("x",),
    outputs=("codes", "scales"),
    cases=_cases,
    errors=(
        ErrorCase("integer x", _bad(np.ones((2, 3), np.int64)), TypeError, r"\bx\b"),
        ErrorCase("0-d x", _bad(np.array(1.0)), ValueError, r"\bx\b"),
        ErrorCase("axis out of range", _bad(np.ones((2, 3)), axis=2), ValueError, r"axis"),
        ErrorCase("axis below range", _bad(np.ones((2, 3)), axis=-3), ValueError, r"axis"),
    ),
    wide_outputs=("scales",),
    summary="symmetric absmax int8, codes in [-127, 127], float32 scale per slice",
)
