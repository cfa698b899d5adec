"""FP4 E2M1 quantization: per-tensor E2M1, OCP MXFP4 (E8M0 scale per 32) and NVIDIA NVFP4
(E4M3 scale per 16 and a float32 tensor scale)."""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, require
from lmspec.spec._quant import check_choice, check_float_array

E2M1_MAX = 6.0
E4M3_MAX = 448.0
BLOCK = {"e2m1": None, "mxfp4": 32, "nvfp4": 16}  # elements per scale along the last axis
E8M0_BIAS = 127
MX_EMAX = 2  # exponent of E2M1's largest power of two (4 = 2**2), OCP MX "emax_elem"


def quant_fp4(x, *, fmt: str = "mxfp4", tensor_scale: float | None = None):
    """FP4 (E2M1) codes packed two per byte, their scales, and a float32 tensor scale.

    E2M1 (OCP MX v1.0): sign, 2 exponent bits (bias 1), 1 mantissa bit; the non-negative values
    are 0, 0.5, 1, 1.5, 2, 3, 4, 6 (codes 0-7); code ``8 | c`` is ``-value(c)`` (8 is -0);
    no inf, no NaN. Codes are packed two per byte along the last axis exactly as INT4 is
    (``spec.quant_int4``): element ``2j`` in the LOW nibble, ``2j + 1`` in the HIGH nibble.

    Shapes: ``x`` (..., D) floating, at least one axis; D even ("e2m1"), a multiple of 32
    ("mxfp4") or of 16 ("nvfp4"). Outputs: ``codes`` uint8 (..., D/2); ``scales`` (below);
    ``tensor_scale`` float32 (), 1 except for "nvfp4".

    Formats (every quotient below is exact: the input's value over the float32 or power-of-two
    scale; ``E2M1(y)`` rounds to nearest on the grid, ties to even code, after saturating
    ``|y|`` to 6; ``E4M3(y)`` likewise on spec.quant_fp8's E4M3FN grid, saturating to 448):

    - ``"e2m1"``: one float32 scale ``s = fl32(amax / 6)`` over the whole tensor (1 where that
      is 0); ``scales`` float32 (); ``codes = E2M1(x / s)``.
    - ``"mxfp4"`` (OCP Microscaling v1.0, section 6.3; the microxcaling library): blocks of 32
      along the last axis share ``X = 2**e``, ``e = floor(log2(amax)) - 2`` (2 = E2M1's emax),
      clamped to [-127, 127], ``e = -127`` for an all-zero block; ``scales`` uint8 (..., D/32),
      E8M0 biased exponents ``e + 127`` (0-254; 255 would be NaN, never produced);
      ``codes = E2M1(x / X)``. ``floor`` puts ``amax / X`` in [4, 8): block maxima above 6
      saturate to 6 (the spec's choice, kept here).
    - ``"nvfp4"`` (NVIDIA, Blackwell; TensorRT-Model-Optimizer's NVFP4 recipe): tensor scale
      ``t = tensor_scale`` if given (a static, calibrated scale, converted to float32), else
      ``fl32(amax / (6 * 448))`` over the whole tensor (1 where that is 0); blocks of 16
      along the last axis get an E4M3 scale ``b = E4M3(block_amax / (6 t))`` (``scales``:
      uint8 E4M3FN bit patterns (..., D/16)); ``codes = E2M1(x / (value(b) t))``, and code 0
      wherever ``value(b) == 0`` (a zero block, or one under 2**-10 * 6 t).

    Dequantization: ``value(codes) * scale(block) * tensor_scale`` with ``scale(block)`` the
    float32 scale, ``2**(scales - 127)`` or ``value(scales)`` (lmspec.reference.dequant_fp4).
    Codes and E4M3 block scales are compared exactly, except within
    ``spec._quant.QUOTIENT_MARGIN`` of a midpoint between two grid points (either neighbour
    accepted there); exact midpoints round to even. E8M0 scales are exact. Float scales follow
    the float policy. Inputs are finite; non-finite values are outside the domain.

    Rejected: integer ``x`` (TypeError); a 0-d ``x``, unknown ``fmt``, D not a multiple of the
    block (or odd), ``tensor_scale`` with a format other than "nvfp4", ``tensor_scale`` not
    positive and finite (ValueError, naming the argument).
    """
    check_args(x, fmt=fmt, tensor_scale=tensor_scale)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def scales_shape(x_shape: tuple[int, ...], fmt: str) -> tuple[int, ...]:
    return () if fmt == "e2m1" else x_shape[:-1] + (x_shape[-1] // BLOCK[fmt],)


def check_args(x, *, fmt: str = "mxfp4", tensor_scale: float | None = None) -> None:
    shape = check_float_array("x", x)
    check_choice("fmt", fmt, tuple(BLOCK))
    block = BLOCK[fmt] or 2
    require(shape[-1] % block == 0, ValueError,
            f"x: fmt {fmt!r} expects a last axis that is a multiple of {block}, got shape {shape}")
    if tensor_scale is not None:
        require(fmt == "nvfp4", ValueError,
                f"tensor_scale: only fmt 'nvfp4' has a tensor scale, got fmt {fmt!r}")
        ok = isinstance(tensor_scale, Real) and math.isfinite(tensor_scale)
        require(ok and tensor_scale > 0, ValueError,
                f"tensor_scale: expected a positive finite float, got {tensor_scale!r}")


@st.composite
def _cases(draw) -> Case:
    fmt = draw(st.sampled_from(tuple(BLOCK)))
    block = BLOCK[fmt] or 2
    shape = draw(S.leading_shapes()) + (block * draw(st.sampled_from((0, 1, 2, 3))),)
    x = draw(S.float_arrays(shape, scales=S.SCALES + (1000.0,)))
    tensor_scale = None
    if fmt == "nvfp4" and draw(st.integers(0, 3)) == 0:  # static: 0.1x to 2x, saturates
        amax = float(np.abs(x).max(initial=0.0)) or 1.0
        factor = draw(st.sampled_from((0.1, 0.5, 1.0, 2.0)))
        tensor_scale = float(np.float32(factor * amax / (E2M1_MAX * E4M3_MAX)))
    return Case({"x": x}, {"fmt": fmt, "tensor_scale": tensor_scale})


def _bad(shape=(2, 32), int_x=False, **params):
    x = np.ones(shape, np.int64 if int_x else np.float64)
    return lambda: ({"x": x}, {"fmt": "mxfp4"} | params)


def _features(case: Case) -> dict[str, str]:
    """A static (given) nvfp4 tensor scale or none (computed from the tensor)."""
    return {"tensor_scale": "None" if case.params.get("tensor_scale") is None else "given"}


COMPONENT = Component(
    stem="quant_fp4",
    features=_features,
    coverage={"fmt": ("e2m1", "mxfp4", "nvfp4"), "tensor_scale": ("None", "given")},
    inputs=("x",),
    outputs=("codes", "scales", "tensor_scale"),
    cases=_cases,
    errors=(
        ErrorCase("integer x", _bad(int_x=True), TypeError, r"\bx\b"),
        ErrorCase("0-d x", _bad(()), ValueError, r"\bx\b"),
        ErrorCase("unknown fmt", _bad(fmt="fp4"), ValueError, r"fmt"),
        ErrorCase("mxfp4 row not a multiple of 32", _bad((2, 16)), ValueError, r"\bx\b"),
        ErrorCase("nvfp4 row not a multiple of 16", _bad((2, 24), fmt="nvfp4"), ValueError,
                  r"\bx\b"),
        ErrorCase("e2m1 odd row", _bad((2, 3), fmt="e2m1"), ValueError, r"\bx\b"),
        ErrorCase("tensor_scale with mxfp4", _bad(tensor_scale=1.0), ValueError,
                  r"tensor_scale"),
        ErrorCase("non-positive tensor_scale", _bad(fmt="nvfp4", tensor_scale=0.0), ValueError,
                  r"tensor_scale"),
    ),
    wide_outputs=("tensor_scale",),
    summary="FP4 E2M1 packed two per byte; per-tensor, MXFP4 (E8M0 / 32), NVFP4 (E4M3 / 16)",
)
