"""Conformance of moe_layer: forward (out, kept), gradients, error inputs, and the properties of
dispatch and combine: every kept assignment counted once, dropped ones reported, capacity,
expert relabelling, zero-weight tokens."""

from __future__ import annotations

import numpy as np
from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.reference.moe_layer import kept_mask
from lmspec.spec import Case
from lmspec.spec import _strategies as S
from lmspec.spec.moe_layer import COMPONENT, expert_capacity

STEM = COMPONENT.stem
ROUTED = ("w_gate", "w_up", "w_down")

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


def _kept(case: Case) -> np.ndarray:
    n, k = case.arrays["topk_ids"].shape
    e = case.arrays["w_gate"].shape[0]
    cap = expert_capacity(n, k, e, case.params["capacity_factor"])
    return kept_mask(case.arrays["topk_ids"], e, cap)


@given(case=COMPONENT.cases())
def test_kept_is_exact_and_within_capacity(target, case):
    """``kept`` is discrete: equal to the slot-priority rule exactly, in every dtype, and no
    expert keeps more than C assignments."""
    check.require_impl(target, STEM)
    got = check.outputs_np(target, STEM, case)
    if got is None:
        return
    want = _kept(case)
    if not np.array_equal(got[1].astype(bool), want):
        idx = tuple(int(i) for i in np.argwhere(got[1].astype(bool) != want)[0])
        check.fail(f"kept differs from the slot-priority capacity rule at (token, slot) {idx}: "
                   f"got {bool(got[1][idx])}, expected {bool(want[idx])}", target, STEM,
                   "property-kept", "kept", case)
    ids, e = case.arrays["topk_ids"], case.arrays["w_gate"].shape[0]
    cap = expert_capacity(*ids.shape, e, case.params["capacity_factor"])
    if cap is not None:
        assert np.bincount(ids[want], minlength=e).max(initial=0) <= cap


@given(case=COMPONENT.cases())
def test_no_token_lost_or_duplicated(target, case):
    """With every expert equal to expert 0, the layer is ``sum_j kept_ij w_ij ffn_0(x_i)``: a
    single expert fed the weights masked by ``kept`` gives the same output. A lost, duplicated
    or unreported dropped assignment breaks it."""
    same = {n: np.broadcast_to(case.arrays[n][:1], case.arrays[n].shape).copy() for n in ROUTED}
    a = Case(dict(case.arrays, **same), case.params)
    one = {n: case.arrays[n][:1] for n in ROUTED}
    masked = case.arrays["topk_weights"] * _kept(case)
    b = Case(dict(case.arrays, **one, topk_ids=np.zeros_like(case.arrays["topk_ids"]),
                  topk_weights=masked), dict(case.params, capacity_factor=None))
    check.check_same(target, "no_token_lost", STEM, a, b)


@given(case=COMPONENT.cases())
def test_large_capacity_equals_no_capacity(target, case):
    """A capacity no expert can fill (c = 1e9) keeps everything, exactly as None."""
    big = Case(case.arrays, dict(case.params, capacity_factor=1e9))
    none = Case(case.arrays, dict(case.params, capacity_factor=None))
    for i, view in enumerate(("out", "kept")):
        check.check_same(target, f"large_capacity_{view}", STEM, big, none,
                         view_a=lambda o, i=i: o[i], view_b=lambda o, i=i: o[i])


@given(case=COMPONENT.cases(), seed=S.seeds())
def test_relabelling_experts_changes_nothing(target, case, seed):
    """Expert e renamed p[e], its weights moved with it: outputs and ``kept`` are unchanged
    (capacity is counted per expert, whatever its label)."""
    e = case.arrays["w_gate"].shape[0]
    perm = np.random.default_rng(seed).permutation(e)
    moved = {n: np.empty_like(case.arrays[n]) for n in ROUTED}
    for n in ROUTED:
        moved[n][perm] = case.arrays[n]
    b = Case(dict(case.arrays, **moved, topk_ids=perm[case.arrays["topk_ids"]]), case.params)
    for i, view in enumerate(("out", "kept")):
        check.check_same(target, f"relabel_{view}", STEM, case, b,
                         view_a=lambda o, i=i: o[i], view_b=lambda o, i=i: o[i])


@given(case=COMPONENT.cases(), seed=S.seeds())
def test_zero_weight_tokens_get_only_the_shared_expert(target, case, seed):
    """A token whose routing weights are all zero gets the shared expert's output alone (zero
    without one): the same rows as the layer whose routed experts output zero (w_down = 0)."""
    n = case.arrays["x"].shape[0]
    rows = np.random.default_rng(seed).uniform(size=n) < 0.5
    w = np.where(rows[:, None], 0.0, case.arrays["topk_weights"])
    a = Case(dict(case.arrays, topk_weights=w), case.params)
    b = Case(dict(case.arrays, w_down=np.zeros_like(case.arrays["w_down"])), case.params)
    check.check_same(target, "zero_weights_shared_only", STEM, a, b,
                     view_a=lambda o: o[0][rows], view_b=lambda o: o[0][rows])
