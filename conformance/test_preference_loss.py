"""Conformance of preference_loss (DPO/cDPO, robust, IPO): loss, rewards, gradient, errors,
the swap identity, DPO as Bradley-Terry on implicit rewards, vanishing gradient."""

from __future__ import annotations

import numpy as np
from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec import _strategies as S
from lmspec.spec._tolerance import K
from lmspec.spec.preference_loss import COMPONENT, swap_slope

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


def _swapped(case: Case) -> Case:
    a = case.arrays
    return Case({"policy_chosen": a["policy_rejected"], "policy_rejected": a["policy_chosen"],
                 "ref_chosen": a["ref_rejected"], "ref_rejected": a["ref_chosen"]}, case.params)


@given(case=COMPONENT.cases())
def test_swapping_chosen_and_rejected(target, case):
    """l(-h) - l(h) = kappa h exactly (spec): the swapped loss is the loss plus kappa/beta times
    the mean reward margin, and the rewards trade places."""
    p = case.params
    k = swap_slope(p["beta"], p["loss_type"], p["label_smoothing"]) / p["beta"]
    check.check_same(target, "swap", STEM, _swapped(case), case,
                     view_a=lambda o: np.concatenate([[o[0]], o[1], o[2]]),
                     view_b=lambda o: np.concatenate([[o[0] + k * np.mean(o[1] - o[2])], o[2],
                                                      o[1]]))


@given(case=COMPONENT.cases(), seed=S.seeds())
def test_pair_order_does_not_matter(target, case, seed):
    perm = np.random.default_rng(seed).permutation(len(case.arrays["policy_chosen"]))
    b = Case({n: a[perm] for n, a in case.arrays.items()}, case.params)
    check.check_same(target, "pair_permutation", STEM, case, b)


@given(case=COMPONENT.cases())
def test_dpo_is_bradley_terry_on_implicit_rewards(target, case):
    """sigmoid at eps = 0 with the reference at 0 and beta = 1/2: reward_model_loss on
    beta * policy (exact in every dtype: a power-of-two scaling)."""
    r = check.rounded(case, STEM, target.np_dtype)
    zero = np.zeros_like(r["ref_chosen"])
    a = Case({"policy_chosen": r["policy_chosen"], "policy_rejected": r["policy_rejected"],
              "ref_chosen": zero, "ref_rejected": zero},
             {"beta": 0.5, "loss_type": "sigmoid", "label_smoothing": 0.0})
    b = Case({"chosen": 0.5 * r["policy_chosen"], "rejected": 0.5 * r["policy_rejected"],
              "margin": None})
    check.check_same(target, "dpo_is_bradley_terry", STEM, a, b, stem_b="reward_model_loss")


def test_at_the_reference_the_loss_is_ln2(target):
    """policy == reference: h = 0, sigmoid and robust give ln 2 whatever beta and eps."""
    logps = -np.array([3.0, 10.0, 0.5, 120.0])
    for loss_type, eps in (("sigmoid", 0.0), ("sigmoid", 0.2), ("robust", 0.3)):
        case = Case({n: logps for n in COMPONENT.inputs},
                    {"beta": 0.1, "loss_type": loss_type, "label_smoothing": eps})
        check.check_forward(target, STEM, case)
        out = check.outputs_np(target, STEM, case)
        if out is not None:
            # ln 2 up to float32 ulps, or in a lower dtype K x the naive evaluation's own
            # error there (robust's (1 - eps) and eps terms round apart in float16)
            naive = check.reference_outputs(STEM, case.arrays, case.params, target.np_dtype)
            low = target.np_dtype.itemsize < 4
            slack = abs(float(naive[0]) - np.log(2.0)) if low else 0.0
            bound = K["output"] * slack + 4 * np.finfo(np.float32).eps
            assert abs(out[0] - np.log(2.0)) <= bound, (loss_type, out, bound)


def test_gradient_vanishes_at_a_large_margin(target):
    """DPO at eps = 0: dl/dh = -beta sigmoid(-beta h) -> 0 as h -> +inf."""
    pc, pr = -np.array([1.0, 2.0, 3.0]), -np.array([400.0, 500.0, 600.0])
    ref = -np.array([50.0, 50.0, 50.0])
    case = Case({"policy_chosen": pc, "policy_rejected": pr, "ref_chosen": ref,
                 "ref_rejected": ref}, {"beta": 0.5, "loss_type": "sigmoid",
                                        "label_smoothing": 0.0})
    check.check_backward(target, STEM, case, seed=0)
