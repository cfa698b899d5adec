"""Conformance of quant_kv_cache: the output under the float policy against the reference
attending over the reference's own cache codes; where a K or V quotient x / scale lies on a
knife edge (within spec._quant.QUOTIENT_MARGIN of a rounding boundary) the output computed with
either neighbouring code is accepted, and only there. Error inputs as sdpa's plus the format."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, reject

from lmspec.conformance import _check as check
from lmspec.reference import computing_in
from lmspec.reference.quant_kv_cache import attend, encode, kv_quotients
from lmspec.spec import Case
from lmspec.spec._quant import QUOTIENT_MARGIN
from lmspec.spec._tolerance import judge
from lmspec.spec.quant_kv_cache import COMPONENT

STEM = COMPONENT.stem
MAX_EDGES = 4  # a case with more knife-edge codes is redrawn (2**4 alternatives at most)


def cache_alternatives(arrays: dict, fmt: str):
    """Every admissible (k_codes, k_scales, v_codes, v_scales): the reference's codes, with
    each knife-edge code replaced by either neighbour."""
    parts, edges = {}, []
    for name in ("k", "v"):
        y, s = kv_quotients(arrays[name], fmt)
        lo, hi = encode(y * (1 - QUOTIENT_MARGIN), fmt), encode(y * (1 + QUOTIENT_MARGIN), fmt)
        parts[name] = (encode(y, fmt), s)
        edges += [(name, tuple(i), lo[tuple(i)], hi[tuple(i)]) for i in np.argwhere(lo != hi)]
    if len(edges) > MAX_EDGES:
        reject()
    for choice in itertools.product((0, 1), repeat=len(edges)):
        codes = {n: parts[n][0].copy() for n in parts}
        for (name, idx, lo, hi), c in zip(edges, choice, strict=True):
            codes[name][idx] = hi if c else lo
        yield (codes["k"], parts["k"][1], codes["v"], parts["v"][1]), len(edges)


@given(case=COMPONENT.cases())
def test_forward(target, case):
    check_case(target, case)


def check_case(target, case: Case) -> None:
    check.require_impl(target, STEM)
    arrays = check.rounded(case, STEM, target.np_dtype)
    outs = check.run_case(target, STEM, "forward", lambda: target.backend.call(
        STEM, check.to_native(target, STEM, arrays), case.params))
    if outs is None:
        return
    got = target.backend.to_numpy(outs[0])
    p = case.params
    (mag,) = check.magnitudes(STEM, arrays, p)
    first, n_edges = None, 0
    for cache, n_edges in cache_alternatives(arrays, p["fmt"]):  # noqa: B007 - used after
        kw = dict(fmt=p["fmt"], causal=p["causal"], scale=p["scale"])
        ref = attend(arrays["q"], *cache, **kw)
        with computing_in(target.np_dtype):
            naive = attend(arrays["q"].astype(target.np_dtype), *cache, **kw)
        verdict = judge(got, ref, naive, out_dtype=check.output_dtype(got, target),
                        kind="output", backend=target.backend.name, component=STEM,
                        dtype=target.dtype, magnitude=mag)
        first = first or verdict
        if verdict.ok:
            check.settle(verdict, target, STEM, "forward", "out", case)
            return
    if n_edges:
        first = type(first)(**{**first.__dict__, "reason": f"{first.reason} (and with either "
                                                           f"code at each of the {n_edges} "
                                                           f"knife-edge cache entries)"})
    check.settle(first, target, STEM, "forward", "out", case)


def test_errors(target):
    check.check_errors(target, STEM)


def test_per_token_scales_are_not_per_tensor(target):
    """One token far larger than the rest: a per-tensor scale would flush the small tokens'
    keys and values to a few codes; per (token, head) scales keep them."""
    rng = np.random.default_rng(0)
    k = rng.standard_normal((1, 6, 1, 8))
    v = rng.standard_normal((1, 6, 1, 8))
    k[0, 0] *= 1000.0
    v[0, 0] *= 1000.0
    q = rng.standard_normal((1, 6, 1, 8))
    for fmt in ("int8", "e4m3"):
        check_case(target, Case({"q": q, "k": k, "v": v},
                                {"fmt": fmt, "causal": True, "scale": None}))


def test_subnormal_row_scales_clip_the_codes(target):
    """V rows so small that their scales amax / 127 (or / max) are float32 subnormals: the
    scale's rounding is coarse and the quotients near amax pass the grid's maximum, where the
    clip (the saturation) must bind; the output is then of V's size, and a wrapped (or NaN)
    code shows in it."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 4, 2, 8))
    k = rng.standard_normal((1, 4, 1, 8))
    for fmt, top in (("int8", 127), ("e4m3", 448.0), ("e5m2", 57344.0)):
        # amax = 1.3 ulps of 2**-149 times the max: scale 1 ulp, quotient 1.3 * max
        v = rng.uniform(-1.0, 1.0, (1, 4, 1, 8))
        v[..., 0] = 1.0
        v = v * 1.3 * top * 2.0**-149
        check_case(target, Case({"q": q, "k": k, "v": v},
                                {"fmt": fmt, "causal": False, "scale": None}))
