"""Weight-only quantized matmul: ``y = x @ dequant(W)^T`` with INT4 (group-wise, asymmetric,
two codes per byte) or INT8 (symmetric) weights, as GPTQ/AWQ/Marlin-style serving kernels run it.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, is_integer_array, require, shape_of


def quant_matmul(x, packed, scales, zeros=None, *, bits: int = 4, group_size: int = 128,
                 mode: str = "weight_only"):
    """Multiply activations by a quantized weight; returns ``y`` (M, N) in the dtype of ``x``.

    Shapes: ``x`` (M, K) float; the weight W is (N, K) (out features, in features, the layout
    of ``nn.Linear.weight``), stored as

    - ``bits=4``: ``packed`` (N, K // 2) bytes (values 0..255), two unsigned 4-bit codes per
      byte along K: element ``2j`` in the LOW nibble, ``2j + 1`` in the HIGH nibble (the
      layout of lmspec.spec.quant_int4); ``zeros`` (N, K // group_size) integer zero points
      in 0..15 (unpacked, one per group); K must be even.
    - ``bits=8``: ``packed`` (N, K) signed codes in -127..127 (lmspec.spec.quant_int8's);
      ``zeros`` must be None (symmetric).

    ``scales`` (N, K // group_size) float, one per (row, group of ``group_size`` consecutive
    input columns); ``group_size`` must divide K. ``group_size == K`` is per-channel (one
    scale per output row, quant_int8's weight layout with its scales reshaped to (N, 1)).
    Any integer dtype is accepted for ``packed`` and ``zeros`` (the value is what counts: a
    harness may widen uint8 to int64).

    Math (dequantize, then multiply):

        W[n, k] = (q[n, k] - zeros[n, k // group_size]) * scales[n, k // group_size]   (int4)
        W[n, k] = q[n, k] * scales[n, k // group_size]                                  (int8)
        y = x @ W^T

    Accumulation is float32 (or wider); the reference computes in float64. Its "naive"
    evaluation in a lower dtype rounds the dequantized weight to that dtype (as a fused
    kernel feeding a bf16/fp16 tensor core does) and accumulates in float32.

    ``mode="w8a8"`` (SmoothQuant / LLM.int8()-style W8A8, int8 x int8 -> int32): needs
    ``bits=8``, ``group_size == K`` (one scale per output channel) and no zeros. The
    activations are quantized per token with quant_int8's rule (``sx = fl32(amax / 127)`` per
    row of x, 1 for an all-zero row; ``xq = clip(rne(x / sx), -127, 127)``), the codes are
    multiplied exactly in integers (int32 accumulation: exact for K < 2**31 / 127**2), then
    ``y[m, n] = acc[m, n] * sx[m] * scales[n, 0]``, rounded once to x's dtype. The activation
    codes are discrete: an implementation must reproduce them exactly (the quotient x / sx
    taken in float64, or proven equal), since one code off moves y by sx * |W| (no knife-edge
    allowance is made here).

    Gradient: with respect to ``x`` only (``dx = dy @ W``): codes, scales and zero points are
    frozen (weight-only quantized inference; QLoRA-style training also freezes them); with
    ``w8a8`` the activation rounding is passed straight through (the STE of quantization-aware
    training), so the gradient is the same ``dy @ W``.

    Rejected (ValueError naming the argument): x not 2-D; packed not 2-D or a float array
    (TypeError); packed's shape not (N, K // 2) (bits 4) or (N, K) (bits 8); ``bits`` not 4 or
    8; ``group_size`` < 1 or not dividing K; scales not (N, K // group_size); zeros missing for
    bits 4, given for bits 8, or not (N, K // group_size); K odd with bits 4; ``mode`` not
    "weight_only" or "w8a8", or w8a8 without bits 8 and group_size K.
    """
    check_args(x, packed, scales, zeros, bits=bits, group_size=group_size, mode=mode)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


MODES = ("weight_only", "w8a8")


def check_args(x, packed, scales, zeros=None, *, bits: int = 4, group_size: int = 128,
               mode: str = "weight_only") -> None:
    xs, ps, ss = shape_of(x), shape_of(packed), shape_of(scales)
    require(mode in MODES, ValueError, f"mode: expected one of {MODES}, got {mode!r}")
    require(mode != "w8a8" or (bits == 8 and len(xs) == 2 and group_size == xs[1]), ValueError,
            f"mode: w8a8 needs bits=8 and group_size == K (per-channel), got bits={bits}, "
            f"group_size={group_size}")
    require(bits in (4, 8), ValueError, f"bits: expected 4 or 8, got {bits!r}")
    require(len(xs) == 2, ValueError, f"x: expected shape (M, K), got {xs}")
    require(is_integer_array(packed), TypeError,
            f"packed: expected an integer array of codes, got dtype {packed.dtype}")
    require(len(ps) == 2, ValueError, f"packed: expected a 2-D array of codes, got {ps}")
    k = xs[1]
    require(isinstance(group_size, (int, np.integer)) and group_size >= 1 and k % group_size
            == 0, ValueError, f"group_size: expected a divisor of K = {k}, got {group_size!r}")
    if bits == 4:
        require(k % 2 == 0, ValueError, f"x: bits=4 needs an even K, got K = {k}")
        require(ps[1] == k // 2, ValueError,
                f"packed: expected (N, K // 2) = (N, {k // 2}) bytes for bits=4, got {ps}")
    else:
        require(ps[1] == k, ValueError, f"packed: expected (N, K) = (N, {k}) for bits=8, got {ps}")
    want = (ps[0], k // group_size)
    require(ss == want, ValueError, f"scales: expected shape {want}, got {ss}")
    if bits == 4:
        require(zeros is not None, ValueError, "zeros: bits=4 needs zero points")
        require(shape_of(zeros) == want, ValueError,
                f"zeros: expected shape {want}, got {shape_of(zeros)}")
        require(is_integer_array(zeros), TypeError, "zeros: expected an integer array")
    else:
        require(zeros is None, ValueError, "zeros: bits=8 is symmetric, zeros must be None")


@st.composite
def quant_matmul_cases(draw) -> Case:
    bits = draw(st.sampled_from((4, 8)))
    m = draw(S.sizes((0, 1, 3, 8)))
    n = draw(S.sizes((1, 2, 5, 8), min_size=1))
    group_size = draw(st.sampled_from((2, 4, 8, 16)))
    k = group_size * draw(st.sampled_from((1, 2, 3)))
    rng = np.random.default_rng(draw(S.seeds()))
    if bits == 4:
        packed = rng.integers(0, 256, (n, k // 2)).astype(np.uint8)
        zeros = rng.integers(0, 16, (n, k // group_size)).astype(np.uint8)
    else:
        packed = rng.integers(-127, 128, (n, k)).astype(np.int8)
        zeros = None
    # scales of a weight of unit size: amax / 7.5 (int4) or amax / 127 (int8)
    scales = rng.uniform(0.5, 1.5, (n, k // group_size)) / (7.5 if bits == 4 else 127.0)
    x = draw(S.float_arrays((m, k), scales=(0.1, 1.0, 4.0)))
    mode = "weight_only"
    if bits == 8 and draw(st.booleans()):  # W8A8: per-channel weight scales
        mode, group_size, scales = "w8a8", k, scales[:, :1]
    return Case({"x": x, "packed": packed, "scales": scales, "zeros": zeros},
                {"bits": bits, "group_size": group_size, "mode": mode})


def _args(bits=4, k=8, n=3, group_size=4, packed_shape=None, scales_shape=None, zeros="auto",
          packed_dtype=np.uint8, **params):
    def build():
        ps = packed_shape or ((n, k // 2) if bits == 4 else (n, k))
        z = zeros
        if isinstance(zeros, str):  # "auto": what the bits ask for
            z = np.zeros((n, k // group_size), np.uint8) if bits == 4 else None
        return {"x": np.ones((2, k)), "packed": np.zeros(ps, packed_dtype),
                "scales": np.ones(scales_shape or (n, k // group_size)), "zeros": z}, \
            {"bits": bits, "group_size": group_size, **params}
    return build


COMPONENT = Component(
    stem="quant_matmul",
    coverage={"bits": ("4", "8"), "mode": ("w8a8", "weight_only"), "zeros": ("given", "absent")},
    inputs=("x", "packed", "scales", "zeros"),
    outputs=("y",),
    differentiable=("x",),
    integer_inputs=("packed", "zeros"),
    cases=quant_matmul_cases,
    errors=(
        ErrorCase("bits not 4 or 8", _args(bits=3), ValueError, r"bits"),
        ErrorCase("group size not dividing K", _args(group_size=3), ValueError, r"group_size"),
        ErrorCase("packed of the unpacked width", _args(packed_shape=(3, 8)), ValueError,
                  r"packed"),
        ErrorCase("float codes", _args(packed_dtype=np.float32), TypeError, r"packed"),
        ErrorCase("scales of the wrong shape", _args(scales_shape=(3, 1)), ValueError,
                  r"scales"),
        ErrorCase("int4 without zero points", _args(zeros=None), ValueError, r"zeros"),
        ErrorCase("w8a8 with int4 weights", _args(mode="w8a8", group_size=8), ValueError,
                  r"mode"),
        ErrorCase("int8 with zero points", _args(bits=8, zeros=np.zeros((3, 2), np.int8)),
                  ValueError, r"zeros"),
    ),
    summary="weight-only INT4 (packed, group-wise, zero points) / INT8 matmul; W8A8; dx only",
)
