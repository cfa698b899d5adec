"""Conformance of moe_bias_update: the new bias, error inputs, and the update's direction."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings

from lmspec.conformance import _check as check
from lmspec.conformance import _results
from lmspec.reference.moe_bias_update import expert_load
from lmspec.spec import Case
from lmspec.spec.moe_bias_update import COMPONENT

STEM = COMPONENT.stem

test_forward, _, test_errors = check.standard_tests(COMPONENT)  # not differentiable

PROPERTY = settings(max_examples=max(2, settings().max_examples // 2))


@PROPERTY
@given(case=COMPONENT.cases())
def test_balanced_load_leaves_the_bias_unchanged(target, case):
    """sign(0) = 0: when every expert has exactly the mean load N k / E, nothing moves."""
    ids, e = case.arrays["topk_ids"], case.params["n_experts"]
    if ids.size == 0:
        return
    reps = e // int(np.gcd(ids.size, e))  # repeat the step's ids until N k is a multiple of E
    flat = np.tile(np.arange(e), ids.size * reps // e)
    balanced = flat.reshape(ids.shape[0] * reps, ids.shape[1])
    bias = check.rounded(case, STEM, target.np_dtype)["bias"]
    c = Case(dict(case.arrays, topk_ids=balanced), case.params)
    check.check_same(target, "balanced_unchanged", STEM, c, c, view_b=lambda o: bias)


@PROPERTY
@given(case=COMPONENT.cases())
def test_every_bias_moves_toward_balance(target, case):
    """Each expert's bias moves by the sign of (mean load - its load): the most loaded expert's
    bias never rises, the least loaded one's never falls, and the move is seen wherever gamma
    survives rounding to the dtype (smaller steps may round away)."""
    check.require_impl(target, STEM)
    arrays = check.rounded(case, STEM, target.np_dtype)
    got = check.outputs_np(target, STEM, case)
    if got is None:
        return
    e, gamma = case.params["n_experts"], case.params["gamma"]
    load = expert_load(arrays["topk_ids"], e)
    want = np.sign(arrays["topk_ids"].size - e * load)
    moved = np.sign(got[0] - arrays["bias"])
    b = arrays["bias"]
    visible = np.ones(e, bool)
    for step in (gamma, -gamma):  # a step of gamma survives rounding to the dtype
        visible &= (b + step).astype(target.np_dtype).astype(np.float64) != b
    wrong = (moved != want) & ((moved != 0) | visible)
    if np.any(wrong):
        i = int(np.flatnonzero(wrong)[0])
        check.fail(f"expert {i}: load {load[i]} vs mean {arrays['topk_ids'].size / e:g}; bias "
                   f"{arrays['bias'][i]!r} -> {got[0][i]!r}, expected to move by "
                   f"{int(want[i])} x gamma={gamma}", target, STEM, "property-direction",
                   "new_bias", case)
    _results.record_check(STEM, target, "property-direction", "new_bias", None)

