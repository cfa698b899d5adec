"""Attention over a quantized KV cache (INT8 or FP8 E4M3/E5M2, one scale per token and head), as
vLLM's and TensorRT-LLM's quantized KV caches store it."""

from __future__ import annotations

from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, require
from lmspec.spec._quant import TINY_ODDS, check_choice, tiny_slices
from lmspec.spec.sdpa import check_args as check_sdpa_args

FORMATS = ("int8", "e4m3", "e5m2")
QMAX = {"int8": 127, "e4m3": 448.0, "e5m2": 57344.0}  # quant_int8's and quant_fp8's maxima


def quant_kv_cache(q, k, v, *, fmt: str = "int8", causal: bool = True,
                   scale: float | None = None):
    """Quantize K and V per (token, head), then attend over the dequantized cache; returns
    ``out`` (B, Tq, Hq, Dv) in the dtype of q.

    Shapes and attention conventions are lmspec.spec.sdpa's: ``q`` (B, Tq, Hq, D), ``k``
    (B, Tk, Hkv, D), ``v`` (B, Tk, Hkv, Dv); GQA query head h reads KV head
    ``h // (Hq // Hkv)``; queries are the last Tq of Tk positions (causal: query i sees keys
    ``j <= i + Tk - Tq``); scores ``scale * q . k`` with ``scale`` default ``1 / sqrt(D)``; a
    query with no visible key outputs 0.

    Cache quantization, for each (b, t, h) row of K (length D) and of V (length Dv)
    separately:

    - ``fmt="int8"``: quant_int8's rule along the last axis: ``scale_kv = fl32(amax / 127)``
      (1 for an all-zero row), ``code = clip(rne(x / scale_kv), -127, 127)``, dequantized
      ``code * scale_kv``.
    - ``fmt="e4m3"`` / ``"e5m2"``: quant_fp8's "token" granularity (dynamic per-row scale
      ``fl32(amax / 448)`` or ``/ 57344``, saturating RNE to the float8 grid), dequantized
      ``value(code) * scale_kv``.

    A row whose ``amax / 127`` (or ``/ FMT_MAX``) is a float32 subnormal has a coarsely
    rounded scale and quotients beyond the grid's maximum: the clip (the saturation) binds
    there, as in quant_int8 and quant_fp8.

    Then ``out = sdpa(q, K_hat, V_hat, causal=causal, scale=scale)[0]``. The reference
    dequantizes exactly (float64); its naive evaluation in a lower dtype rounds K_hat and
    V_hat to that dtype and attends in it, as a kernel that dequantizes into q's dtype does.

    Codes are discrete: an implementation that rounds a quotient ``x / scale_kv`` the other
    way moves one cache entry by a whole quantization step, far beyond the float tolerance.
    The conformance suite therefore measures each quotient's distance to a rounding boundary
    and, only where it lies within spec._quant.QUOTIENT_MARGIN (a float32 quotient may round
    either way there), accepts the output computed with either neighbouring code.

    Not differentiable (an inference cache).

    Rejected: sdpa's shape errors (ValueError naming the argument), ``fmt`` not one of
    "int8", "e4m3", "e5m2", ``scale <= 0``.
    """
    check_args(q, k, v, fmt=fmt, causal=causal, scale=scale)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(q, k, v, *, fmt: str = "int8", causal: bool = True,
               scale: float | None = None) -> None:
    check_choice("fmt", fmt, FORMATS)
    check_sdpa_args(q, k, v, causal=causal, scale=scale)
    require(scale is None or scale > 0, ValueError, f"scale: expected > 0, got {scale}")


@st.composite
def kv_cases(draw) -> Case:
    b = draw(S.sizes((1, 2), min_size=1))
    tk = draw(S.sizes((0, 1, 5, 13)))
    tq = draw(st.sampled_from(tuple({tk, 1, tk + 2})))
    hkv = draw(st.sampled_from((1, 2)))
    hq = hkv * draw(st.sampled_from((1, 2)))
    d = draw(st.sampled_from((1, 4, 16)))
    scales = (0.1, 1.0, 3.0)
    styles = ("normal", "uniform", "outliers", "ties")
    fmt = draw(st.sampled_from(FORMATS))
    kv = [draw(S.float_arrays((b, tk, hkv, dd), styles=styles, scales=scales))
          for dd in (d, d)]
    if draw(st.integers(0, TINY_ODDS - 1)) == 0:  # subnormal row scales: the clip binds
        kv = [tiny_slices(a, QMAX[fmt], draw(S.seeds())) for a in kv]
    return Case({
        "q": draw(S.float_arrays((b, tq, hq, d), scales=scales)),
        "k": kv[0],
        "v": kv[1],
    }, {"fmt": fmt, "causal": draw(st.booleans()),
        "scale": draw(st.sampled_from((None, 0.5)))})


def _qkv(hq=2, hkv=1, **params):
    import numpy as np

    def build():
        return {"q": np.ones((1, 3, hq, 4)), "k": np.ones((1, 3, hkv, 4)),
                "v": np.ones((1, 3, hkv, 4))}, params
    return build


COMPONENT = Component(
    stem="quant_kv_cache",
    coverage={"fmt": ("e4m3", "e5m2", "int8"), "causal": ("True", "False")},
    inputs=("q", "k", "v"),
    outputs=("out",),
    cases=kv_cases,
    errors=(
        ErrorCase("unknown format", _qkv(fmt="int4"), ValueError, r"fmt"),
        ErrorCase("Hq not a multiple of Hkv", _qkv(hq=3, hkv=2), ValueError, r"heads"),
        ErrorCase("non-positive scale", _qkv(scale=0.0), ValueError, r"scale"),
    ),
    summary="attention over an INT8 / FP8 KV cache quantized per (token, head)",
)
