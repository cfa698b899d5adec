"""FP8 quantization (E4M3 / E5M2, OCP FP8), per tensor, per token, and DeepSeek-V3's 1x128
activation tiles and 128x128 weight blocks, with the optional power-of-two scale."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, require, shape_of
from lmspec.spec._quant import TINY_ODDS, check_choice, check_float_array, tiny_slices

FMT_MAX = {"e4m3": 448.0, "e5m2": 57344.0}
GRANULARITIES = ("tensor", "token", "tile", "block")
TILE = 128  # DeepSeek-V3: 1 x 128 activation tiles along the last axis
BLOCK = 128  # DeepSeek-V3: 128 x 128 weight blocks


def quant_fp8(x, scale=None, *, fmt: str = "e4m3", granularity: str = "tensor",
              pow2_scale: bool = False):
    """FP8 codes (bit patterns in uint8) and float32 scales; ``x ~= value(codes) * scale``.

    Formats (OCP 8-bit floating point, 2023): ``"e4m3"`` is E4M3FN (bias 7, max 448, min
    subnormal 2**-9, **no infinity**, NaN = 0x7F / 0xFF; torch.float8_e4m3fn,
    ml_dtypes.float8_e4m3fn); ``"e5m2"`` is IEEE-like (bias 15, max 57344, min subnormal 2**-16,
    inf 0x7C / 0xFC, NaN 0x7D-0x7F). The sign is the top bit; the low bits are the mantissa.

    Granularity (``x`` of shape (..., D)); ``scales`` shapes:

    - ``"tensor"``: one scale, shape ().
    - ``"token"``: one per row (slice along the last axis), shape ``x.shape[:-1]``.
    - ``"tile"``: DeepSeek-V3's activation tiles, 1 x 128 along the last axis, shape
      ``x.shape[:-1] + (ceil(D / 128),)``; the last tile may be partial.
    - ``"block"``: DeepSeek-V3's weight blocks; ``x`` must be 2-D (out, in); 128 x 128 blocks,
      shape ``(ceil(out / 128), ceil(in / 128))``; edge blocks may be partial (DeepSeek-V3's
      ``weight_dequant`` uses the same ceil-division).

    Math, per group (the elements sharing one scale)::

        amax  = max |x|                                   (exact)
        s     = fl32(amax / FMT_MAX[fmt])                 (exact quotient, rounded once)
        s     = 1 where s == 0                             (an all-zero group)
        s     = 2**ceil(log2 s)  if pow2_scale             (the smallest power of two >= s,
                                                           exactly; DeepSeek-V3's "ue8m0"
                                                           scale_fmt, which computes
                                                           exp2(ceil(log2(s))) in float32)
        codes = RNE(saturate(x / s))

    ``saturate`` clamps to [-FMT_MAX, FMT_MAX] *before* the cast (explicitly: ml_dtypes' and
    JAX's float8 casts do not saturate, E4M3FN 470 -> NaN; torch 2.13's E4M3FN cast saturates
    on CPU but its E5M2 cast gives inf), so NaN and inf codes are never produced from finite
    input. With a dynamic scale, ``|x / s| <= FMT_MAX`` within a float32 rounding while ``s``
    is a normal float32; a subnormal ``s`` (``amax < FMT_MAX * 2**-126``) is rounded to
    2**-149 absolute, the quotients near amax can pass FMT_MAX by up to half again, and the
    saturation binds there too (with ``pow2_scale`` as well: 2**-149 is its own power of
    two). RNE is round to nearest on the format's grid, ties to the even mantissa
    (subnormals included); a negative value that rounds to zero keeps its sign (code 0x80),
    as every float8 cast does.

    ``scale`` (optional, float, the shape of ``scales`` above) is a static scale (a calibrated
    activation or KV-cache scale, as vLLM's static FP8 scheme): it is used as is, converted to
    float32; then saturation is what keeps out-of-range values finite. It must be positive
    and finite (not checked) and excludes ``pow2_scale``. The returned ``scales`` are the
    scales used.

    Dequantization: ``value(codes) * scale`` broadcast over each group
    (``lmspec.reference.dequant_fp8``). Codes are compared exactly, except within
    ``spec._quant.QUOTIENT_MARGIN`` of a midpoint between two grid points (either neighbour
    accepted there); exact midpoints round to even. Scales follow the float policy. Inputs
    are finite; non-finite values are outside the domain (not checked).

    Rejected: integer ``x`` (TypeError); a 0-d ``x``, unknown ``fmt`` or ``granularity``,
    ``"block"`` on a non-2-D ``x``, ``scale`` of the wrong shape, ``scale`` with
    ``pow2_scale`` (ValueError, naming the argument).
    """
    check_args(x, scale, fmt=fmt, granularity=granularity, pow2_scale=pow2_scale)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def scales_shape(x_shape: tuple[int, ...], granularity: str) -> tuple[int, ...]:
    """The shape of ``scales`` for an input of ``x_shape``."""
    if granularity == "tensor":
        return ()
    if granularity == "token":
        return x_shape[:-1]
    if granularity == "tile":
        return x_shape[:-1] + (-(-x_shape[-1] // TILE),)
    return (-(-x_shape[0] // BLOCK), -(-x_shape[1] // BLOCK))


def check_args(x, scale=None, *, fmt: str = "e4m3", granularity: str = "tensor",
               pow2_scale: bool = False) -> None:
    shape = check_float_array("x", x)
    check_choice("fmt", fmt, tuple(FMT_MAX))
    check_choice("granularity", granularity, GRANULARITIES)
    require(granularity != "block" or len(shape) == 2, ValueError,
            f"x: granularity 'block' expects a 2-D weight (out, in), got shape {shape}")
    if scale is not None:
        want = scales_shape(shape, granularity)
        require(shape_of(scale) == want, ValueError,
                f"scale: expected shape {want} for granularity {granularity!r}, "
                f"got {shape_of(scale)}")
        require(not pow2_scale, ValueError,
                "pow2_scale: a static scale is used as is; pow2_scale must be False")


@st.composite
def _cases(draw) -> Case:
    granularity = draw(st.sampled_from(GRANULARITIES))
    fmt = draw(st.sampled_from(tuple(FMT_MAX)))
    if granularity == "block":
        shape = (draw(st.sampled_from((1, 3, 130))), draw(st.sampled_from((2, 129, 256))))
    else:
        d = draw(st.sampled_from((1, 8, 17, 128, 200) if granularity == "tile" else
                                 S.FEATURE_SIZES))
        shape = draw(S.leading_shapes()) + (d,)
    x = draw(S.float_arrays(shape, scales=S.SCALES + (1000.0,)))
    if draw(st.integers(0, TINY_ODDS - 1)) == 0:  # subnormal scales: saturation binds
        x = tiny_slices(x, FMT_MAX[fmt], draw(S.seeds()),
                        None if granularity in ("tensor", "block") else -1)
    scale, pow2 = None, draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:  # a static scale, 0.1x to 2x a per-tensor one: saturates
        u = S.make_values(scales_shape(shape, granularity), draw(S.seeds()), "uniform", 1.0)
        amax = float(np.abs(x).max(initial=0.0)) or 1.0
        # at least float16's smallest normal: every dtype under test holds the scale exactly
        scale, pow2 = np.maximum((np.abs(u) + 0.1) * amax / FMT_MAX[fmt], 2.0**-14), False
    return Case({"x": x, "scale": scale}, {"fmt": fmt, "granularity": granularity,
                                           "pow2_scale": pow2})


def _bad(shape=(2, 4), scale=None, **params):
    x = np.ones(shape, np.int64 if params.pop("int_x", False) else np.float64)
    return lambda: ({"x": x, "scale": scale}, {"fmt": "e4m3", "granularity": "tensor"} | params)


COMPONENT = Component(
    stem="quant_fp8",
    coverage={"fmt": ("e4m3", "e5m2"), "granularity": ("block", "tensor", "tile", "token"),
              "pow2_scale": ("True", "False"), "scale": ("given", "absent")},
    inputs=("x", "scale"),
    outputs=("codes", "scales"),
    cases=_cases,
    errors=(
        ErrorCase("integer x", _bad(int_x=True), TypeError, r"\bx\b"),
        ErrorCase("0-d x", _bad(()), ValueError, r"\bx\b"),
        ErrorCase("unknown fmt", _bad(fmt="e3m4"), ValueError, r"fmt"),
        ErrorCase("unknown granularity", _bad(granularity="row"), ValueError, r"granularity"),
        ErrorCase("block on 3-D x", _bad((2, 3, 4), granularity="block"), ValueError, r"\bx\b"),
        ErrorCase("scale of the wrong shape", _bad(scale=np.ones(2)), ValueError, r"scale"),
        ErrorCase("static scale with pow2", _bad(scale=np.array(1.0), pow2_scale=True),
                  ValueError, r"pow2_scale"),
    ),
    wide_outputs=("scales",),
    summary="FP8 E4M3/E5M2, RNE with saturation; tensor/token/1x128 tile/128x128 block scales",
)
