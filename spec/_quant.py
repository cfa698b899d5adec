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

import numpy as np

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


# Subnormal scales: one case in TINY_ODDS has some slices moved (by a power of two) to where
# ``amax / qmax`` is a float32 subnormal or underflows: there the scale's rounding is coarse
# (a scale of a few ulps of 2**-149 is up to 1.5x off), quotients pass qmax and only the clip
# keeps the codes in range; below qmax * 2**-150 the scale is 0, hence 1, and the codes 0.
TINY_ODDS = 8
_F32_MIN_SUBNORMAL_EXP, _F32_MIN_NORMAL_EXP = -149, -126


def tiny_slices(x, qmax: float, seed: int, axis: int | None = -1) -> np.ndarray:
    """``x`` with some slices along ``axis`` (all of ``x`` for ``axis=None``) scaled by a power
    of two so that ``fl32(amax / qmax)`` lands between 2**-152 (underflow) and the smallest
    normal float32, mostly a few subnormal ulps; deterministic in ``seed``."""
    x = np.array(x, np.float64)
    if x.size == 0:
        return x
    rng = np.random.default_rng(seed)
    a = np.abs(x)
    amax = a.max(keepdims=True) if axis is None else a.max(axis=axis, keepdims=True)
    pick = rng.uniform(size=amax.shape) < 0.5
    pick.flat[rng.integers(pick.size)] = True  # at least one slice
    # the scale's exponent: mostly within 2**-152..2**-140 (0 to a few thousand ulps), at
    # times anywhere below the smallest normal
    e = np.where(rng.uniform(size=amax.shape) < 0.75,
                 rng.integers(_F32_MIN_SUBNORMAL_EXP - 3, _F32_MIN_SUBNORMAL_EXP + 10,
                              amax.shape),
                 rng.integers(_F32_MIN_SUBNORMAL_EXP, _F32_MIN_NORMAL_EXP, amax.shape))
    with np.errstate(divide="ignore"):
        now = np.floor(np.log2(np.where(amax > 0, amax / qmax, 1.0)))
    shift = np.where(pick & (amax > 0), e - now, 0).astype(np.int64)
    return np.ldexp(x, np.broadcast_to(shift, x.shape))
