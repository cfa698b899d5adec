"""Conformance of sdpa: forward (out, lse), gradient, error inputs, and the masks' properties."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec import _strategies as S
from lmspec.spec.sdpa import COMPONENT

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


@given(case=COMPONENT.cases())
def test_gqa_equals_mha_with_repeated_heads(target, case):
    """GQA equals MHA whose KV heads are repeated in contiguous groups (HF's repeat_kv):
    query head h reads KV head h // (Hq // Hkv)."""
    q, k, v = (case.arrays[n] for n in ("q", "k", "v"))
    group = q.shape[2] // k.shape[2]
    mha = dict(case.arrays, k=np.repeat(k, group, axis=2), v=np.repeat(v, group, axis=2))
    check.check_same(target, "gqa_is_repeated_mha", STEM, case, Case(mha, case.params))


@given(case=COMPONENT.cases(), data=st.data())
def test_causal_ignores_the_future(target, case, data):
    """With Tq == Tk, the first m causal outputs equal attention over the first m tokens only:
    nothing after a query's position can reach it."""
    q, k = case.arrays["q"], case.arrays["k"]
    if q.shape[1] != k.shape[1] or q.shape[1] < 2:
        return
    m = data.draw(st.integers(1, q.shape[1] - 1))
    params = dict(case.params, causal=True)
    cut = {n: (None if a is None else a[:, :m]) for n, a in case.arrays.items()}
    check.check_same(target, "causal_prefix", STEM, Case(case.arrays, params), Case(cut, params),
                     view_a=lambda o: o[0][:, :m])


@given(case=COMPONENT.cases(), seed=S.seeds())
def test_key_order_does_not_matter_without_position_masks(target, case, seed):
    """Without causal/window masks, permuting keys and values together changes nothing."""
    if case.params["causal"]:
        return
    tk = case.arrays["k"].shape[1]
    perm = np.random.default_rng(seed).permutation(tk)
    shuffled = {n: (a if a is None or n in ("q", "segment_ids_q") else a[:, perm])
                for n, a in case.arrays.items()}
    check.check_same(target, "key_permutation", STEM, case, Case(shuffled, case.params))
