"""Conformance of mla: forward (out, c_kv, k_rope), gradients, error inputs, and its properties:
the absorbed form equals the naive one; decoding with the backend's own cache equals the full
causal pass."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec._tolerance import FLOOR_ULPS, K, floor_for
from lmspec.spec.mla import COMPONENT

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


@given(case=COMPONENT.cases())
def test_absorbed_equals_naive(target, case):
    """Folding W_uk into the query and W_uv into the output (attention in latent space) is the
    same function as expanding per-head K and V."""
    naive = Case(case.arrays, dict(case.params, form="naive"))
    absorbed = Case(case.arrays, dict(case.params, form="absorbed"))
    check.check_same(target, "absorbed_is_naive", STEM, naive, absorbed)


@given(case=COMPONENT.cases(), data=st.data())
def test_causal_ignores_the_future(target, case, data):
    """The first m outputs of a causal pass (after any cache) equal a pass over the first m
    new tokens only: nothing after a query's position reaches it."""
    t = case.arrays["x"].shape[1]
    if t < 2:
        return
    m = data.draw(st.integers(1, t - 1))
    params = dict(case.params, causal=True)
    cut = dict(case.arrays, x=case.arrays["x"][:, :m], positions=case.arrays["positions"][:, :m])
    check.check_same(target, "causal_prefix", STEM, Case(case.arrays, params), Case(cut, params),
                     view_a=lambda o: o[0][:, :m])


def _decode(call, arrays: dict, params: dict) -> tuple[np.ndarray, ...]:
    """One token at a time, each call fed the cache the previous call returned."""
    cache = (arrays["c_kv_cache"], arrays["k_rope_cache"])
    outs = []
    for i in range(arrays["x"].shape[1]):
        step = dict(arrays, x=arrays["x"][:, i:i + 1], positions=arrays["positions"][:, i:i + 1],
                    c_kv_cache=cache[0], k_rope_cache=cache[1])
        out, *cache = (np.asarray(o, np.float64) for o in call(step, params))
        outs.append(out)
    return np.concatenate(outs, axis=1), *cache


def _backend_call(target):
    def call(arrays, params):
        native = check.to_native(target, STEM, arrays)
        return [target.backend.to_numpy(o) for o in target.backend.call(STEM, native, params)]
    return call


def _err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b), initial=0.0))


@given(case=COMPONENT.cases())
def test_decode_with_its_own_cache_equals_the_causal_pass(target, case):
    """Prefill nothing, then decode token by token feeding back the returned (c_kv, k_rope):
    every output row and the final cache equal one causal pass over all tokens. Each side may
    err by its own naive error: the bound is k * (naive_full + naive_decode) + floor."""
    check.require_impl(target, STEM)
    params = dict(case.params, causal=True)
    arrays = check.rounded(case, STEM, target.np_dtype)
    if arrays["x"].shape[1] < 2:
        return
    dtype = target.np_dtype
    ref_full = check.reference_outputs(STEM, arrays, params)
    naive_full = check.reference_outputs(STEM, arrays, params, dtype)
    ref_dec = _decode(lambda a, p: check.reference_outputs(STEM, a, p), arrays, params)
    naive_dec = _decode(lambda a, p: check.reference_outputs(STEM, a, p, dtype), arrays, params)
    got_full = check.outputs_np(target, STEM, Case(case.arrays, params))
    if got_full is None:
        return
    got_dec = _decode(_backend_call(target), arrays, params)
    mags = check.magnitudes(STEM, arrays, params)
    for name, rf, nf, rd, nd, gf, gd, mag in zip(COMPONENT.outputs, ref_full, naive_full,
                                                 ref_dec, naive_dec, got_full, got_dec, mags,
                                                 strict=True):
        scale = float(np.max(np.abs(rf), initial=0.0))
        assert _err(rd, rf) <= 1e-9 * max(scale, 1.0), (
            f"decode != causal pass on the float64 REFERENCE ({name}): the spec or reference "
            f"is wrong. case: {case.describe()}")
        bound = K["output"] * (_err(nf, rf) + _err(nd, rd)) + 2 * floor_for(
            dtype, FLOOR_ULPS, scale, mag)
        err = _err(gd, gf)
        if not err <= bound:
            check.fail(f"property 'decode_is_causal_pass' violated on {name!r}: decode and "
                        f"full pass differ by {err:.3g} > bound {bound:.3g}", target, STEM,
                        "property-decode", name, case)
