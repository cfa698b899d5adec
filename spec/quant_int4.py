"""Group-wise asymmetric INT4 round-to-nearest quantization with zero points (the GPTQ/AWQ grid)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, require
from lmspec.spec._quant import TINY_ODDS, check_float_array, tiny_slices

QMAX = 15
GROUP_SIZES = (1, 2, 3, 8, 16, 32)


def quant_int4(w, *, group_size: int = 128):
    """Asymmetric 4-bit RTN of a weight, one float32 scale and one zero point per group.

    Shapes: ``w`` (out, in) floating with ``in`` even and a multiple of ``group_size``.
    Outputs: ``packed`` uint8 (out, in/2); ``scales`` float32 (out, in/group_size); ``zeros``
    uint8 (out, in/group_size), values in [0, 15], stored as is (no ``zero - 1`` offset: that
    is AutoGPTQ's old "v1" checkpoint quirk, which GPTQModel's v2 format dropped).

    Math, per group ``g`` of ``group_size`` consecutive inputs of one row (GPTQ's
    ``Quantizer.find_params`` with ``sym=False``)::

        lo = min(min(g), 0),  hi = max(max(g), 0)       (the range always contains 0)
        scale = fl32((hi - lo) / 15)                      (exact quotient, rounded once)
        if scale == 0 (an all-zero group, or a range under 15 * 2**-150): lo, hi = -1, 1
        zero  = clip(round_half_even(-lo / scale), 0, 15)
        q     = clip(round_half_even(w / scale) + zero, 0, 15)
        dequantized w = (q - zero) * scale

    Quotients are exact (the input's value over the float32 scale). Because the range contains
    0, ``-lo / scale`` lies in [0, 15] up to the scale's rounding; while the scale is a normal
    float32 that is 2**-24 relative, so the zero's clip does not bind and the codes' clip binds
    only at the group's extremes. A subnormal scale (a range under ``15 * 2**-126``, about
    1.8e-37) is rounded to 2**-149 absolute, coarsely: ``-lo / scale`` and
    ``w / scale + zero`` can leave [0, 15] by several units (range 2.2e-44 = 16 * 2**-149:
    scale 2**-149, quotients up to 16) and both clips bind. 0 still dequantizes exactly
    to 0 (the zero point is an integer). AutoAWQ's ``pseudo_quantize_tensor`` differs: it takes
    ``lo = min(g)``, ``hi = max(g)`` without 0 (and clamps the range at 1e-5), so on a group
    that does not straddle 0 its zero clips and its codes saturate; the two agree on every
    group with ``min(g) <= 0 <= max(g)`` (any weight-like group of 128 normals). Some GPTQ
    ports clamp ``hi - lo`` at 1e-5 (QuaRot's, for one); this spec does not (a group of tiny
    weights keeps its resolution).

    Packing, two codes per byte along ``in``: element ``2j`` in the LOW nibble, ``2j + 1`` in
    the HIGH nibble (``packed = q[..., 0::2] | q[..., 1::2] << 4``). This is GPTQ's order (its
    int32 ``qweight`` puts element ``i`` of 8 in bits ``4i..4i+3``, i.e. the same nibble order
    byte by byte on a little-endian machine, though GPTQ stores the int32 words transposed,
    (in/8, out)); AutoAWQ's GEMM layout packs along ``out`` in the interleaved order
    0, 2, 4, 6, 1, 3, 5, 7 and is not this one.

    Group size equal to ``in`` is per-channel quantization (there is no ``-1`` alias). Codes
    and zeros are compared exactly, except within ``spec._quant.QUOTIENT_MARGIN`` of a
    ``k + 0.5`` boundary (either neighbour accepted there; exact float32 midpoints round to
    even). Inputs are finite; non-finite values are outside the domain (not checked).

    Rejected: integer ``w`` (TypeError); ``w`` not 2-D, ``in`` odd, ``group_size < 1`` or not
    dividing ``in`` (ValueError, naming the argument).
    """
    check_args(w, group_size=group_size)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(w, *, group_size: int = 128) -> None:
    shape = check_float_array("w", w)
    require(len(shape) == 2, ValueError, f"w: expected shape (out, in), got {shape}")
    require(shape[1] % 2 == 0, ValueError,
            f"w: expected an even number of inputs (two codes per byte), got shape {shape}")
    require(isinstance(group_size, (int, np.integer)) and not isinstance(group_size, bool)
            and group_size >= 1, ValueError,
            f"group_size: expected an int >= 1, got {group_size!r}")
    require(shape[1] % group_size == 0, ValueError,
            f"group_size: expected a divisor of w's {shape[1]} inputs, got {group_size}")


@st.composite
def _cases(draw) -> Case:
    out = draw(S.sizes((0, 1, 2, 3, 5)))
    g = draw(st.sampled_from(GROUP_SIZES))
    n_groups = draw(st.sampled_from((2, 4) if g % 2 else (1, 2, 3)))
    w = draw(S.float_arrays((out, g * n_groups)))
    if draw(st.integers(0, TINY_ODDS - 1)) == 0:  # subnormal scales: the clips bind
        w = tiny_slices(w, QMAX, draw(S.seeds()))  # whole rows: every group of the row
    return Case({"w": w}, {"group_size": g})


def _bad(shape, group_size=2, dtype=np.float64):
    return lambda: ({"w": np.ones(shape, dtype)}, {"group_size": group_size})


COMPONENT = Component(
    stem="quant_int4",
    inputs=("w",),
    outputs=("packed", "scales", "zeros"),
    cases=_cases,
    errors=(
        ErrorCase("integer w", _bad((2, 4), dtype=np.int64), TypeError, r"\bw\b"),
        ErrorCase("1-d w", _bad((4,)), ValueError, r"\bw\b"),
        ErrorCase("odd number of inputs", _bad((2, 3), group_size=1), ValueError, r"\bw\b"),
        ErrorCase("group_size not dividing in", _bad((2, 6), group_size=4), ValueError,
                  r"group_size"),
        ErrorCase("group_size 0", _bad((2, 4), group_size=0), ValueError, r"group_size"),
        ErrorCase("group_size -1", _bad((2, 4), group_size=-1), ValueError, r"group_size"),
    ),
    wide_outputs=("scales",),
    summary="asymmetric group-wise int4 RTN with zero points; two codes per byte, low first",
)
