"""Shared rules of the quantization specs: the knife-edge margin for discrete codes.

Quantization codes are discrete outputs, compared exactly, except where a correct float32
implementation may legitimately round the other way: the quotient ``y = x / scale`` lies within
``QUOTIENT_MARGIN * |y|`` of a rounding boundary (a midpoint between two grid points). There,
both neighbouring codes are accepted (and only there). The margin covers float32 evaluation
orders of a few operations (a correctly rounded division is 2**-24 relative; a reciprocal
multiply, a two-level scale product, or a scale one ulp off add a few more 2**-24 terms); it is
far below any real rounding error, and exact midpoints (where ties-to-even is the rule) are
tested separately on inputs whose quotients are exact in float32.
"""

from __future__ import annotations

from lmspec.spec._contract import is_integer_array, require, shape_of

QUOTIENT_MARGIN = 2.0**-20


def check_float_array(name: str, a, min_ndim: int = 1) -> tuple[int, ...]:
    """The one check of a quantizer's float input: a floating array of at least ``min_ndim``."""
    shape = shape_of(a)
    require(not is_integer_array(a), TypeError,
            f"{name}: expected a floating array, got dtype {getattr(a, 'dtype', '?')}")
    require(len(shape) >= min_ndim, ValueError,
            f"{name}: expected at least {min_ndim} axes, got shape {shape}")
    return shape


def check_choice(name: str, value, choices: tuple) -> None:
    require(value in choices, ValueError,
            f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
