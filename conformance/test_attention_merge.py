"""Conformance of attention_merge: forward, gradient, errors, and merging sdpa over key splits."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from lmspec import reference
from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec._tolerance import judge
from lmspec.spec.attention_merge import COMPONENT
from lmspec.spec.sdpa import attention_cases

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


def _keys(arrays: dict, a: int, b: int) -> dict:
    """The sdpa inputs restricted to keys [a, b)."""
    keyed = ("k", "v", "segment_ids_kv")
    return {n: (x[:, a:b] if n in keyed and x is not None else x) for n, x in arrays.items()}


@given(case=attention_cases(), data=st.data())
def test_merging_sdpa_over_key_splits_is_sdpa_over_all_keys(target, case, data):
    """Flash-decoding: split the keys anywhere (empty splits allowed), attend to each split,
    merge by lse: the result is sdpa over all keys, within sdpa's own tolerance.

    The partial results come from the float64 reference sdpa, rounded as a real split kernel
    hands them over (out in the dtype under test, lse in float32, -inf where a query saw no key
    of its split: segment ids make that happen), so that a failure points at the merge and not
    at the backend's sdpa. Non-causal: sdpa's causal offset is relative to each split's Tk."""
    check.require_impl(target, STEM)
    params = dict(case.params, causal=False, window=None)
    arrays = check.rounded(Case(case.arrays, params), "sdpa", target.np_dtype)
    tk = arrays["k"].shape[1]
    cuts = data.draw(st.lists(st.integers(0, tk), min_size=0, max_size=3), label="cuts")
    edges = [0, *sorted(cuts), tk]
    parts = [reference.sdpa(**_keys(arrays, a, b), **params)
             for a, b in zip(edges, edges[1:], strict=False)]
    outs = np.stack([p[0] for p in parts]).astype(target.np_dtype).astype(np.float64)
    wide = "float64" if target.dtype == "float64" else "float32"  # sdpa's lse dtype
    lses = np.stack([p[1] for p in parts]).astype(wide)
    native = {"outs": target.backend.asarray(outs, target.dtype),
              "lses": target.backend.asarray(lses, wide)}
    got = check.run_case(target, STEM, "property", lambda: target.backend.call(STEM, native, {}))
    if got is None:
        return
    ref = check.reference_outputs("sdpa", arrays, params)
    naive = check.reference_outputs("sdpa", arrays, params, target.np_dtype)
    mags = check.magnitudes("sdpa", arrays, params)
    for name, g, r, n, mag in zip(COMPONENT.outputs, got, ref, naive, mags, strict=True):
        g_np = target.backend.to_numpy(g)
        verdict = judge(g_np, r, n, out_dtype=check.output_dtype(g_np, target), kind="output",
                        backend=target.backend.name, component=STEM, dtype=target.dtype,
                        neg_inf_ok=name == "lse", magnitude=mag)
        check.settle(verdict, target, STEM, "property-sdpa_splits", name,
                      Case(arrays, dict(params, cuts=tuple(cuts))))


def test_dead_rows_are_zero_with_minus_inf_and_zero_gradient(target):
    """True -inf lses (the harness saturates -inf in drawn cases): a dead split is ignored, an
    all-dead row gives out 0 and lse -inf, and no gradient is NaN."""
    check.require_impl(target, STEM)
    outs = np.stack([np.full((1, 2, 1, 3), 0.5), np.full((1, 2, 1, 3), 0.25)])
    lses = np.array([[[[1.5], [-np.inf]]], [[[-np.inf], [-np.inf]]]], np.float32)
    native = {"outs": target.backend.asarray(outs, target.dtype),
              "lses": target.backend.asarray(lses, "float32")}
    got = check.run_case(target, STEM, "property", lambda: target.backend.call(STEM, native, {}))
    if got is None:
        return
    out, lse = (np.asarray(target.backend.to_numpy(g), np.float64) for g in got)
    assert np.array_equal(out[0, :, 0], [[0.5] * 3, [0.0] * 3]), out
    assert lse[0, 0, 0] == 1.5 and lse[0, 1, 0] == -np.inf, lse
    if not target.backend.has_vjp(STEM):
        return
    cts = [target.backend.asarray(np.ones(out.shape), target.dtype),
           target.backend.asarray(np.ones(lse.shape), "float32")]
    grads = target.backend.vjp(STEM, native, {}, cts, ("outs", "lses"))
    for name, g in grads.items():
        g = np.asarray(target.backend.to_numpy(g), np.float64)
        assert np.all(np.isfinite(g)), (name, g)
        assert np.all(g[:, 0, 1] == 0), (name, g)  # the all-dead row
    douts = np.asarray(target.backend.to_numpy(grads["outs"]), np.float64)
    assert np.array_equal(douts[:, 0, 0, 0, 0], [1.0, 0.0]), douts  # the live split takes it all
