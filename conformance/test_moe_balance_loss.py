"""Conformance of moe_balance_loss: loss, gradient, error inputs, and its symmetries."""

from __future__ import annotations

import numpy as np
from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec import _strategies as S
from lmspec.spec.moe_balance_loss import COMPONENT

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


# the order properties run every example of the profile on cases with tokens (they are cheap;
# a quarter of the examples, most of them empty, left a sequence-layout bug unseen)
NONEMPTY = COMPONENT.cases().filter(lambda c: c.arrays["scores"].shape[0] > 0)


@given(case=NONEMPTY, seed=S.seeds())
def test_token_order_within_a_sequence_does_not_matter(target, case, seed):
    """Permuting tokens (scores and ids together) inside each sequence changes nothing; the
    sequences themselves may be reordered too."""
    scores, ids = case.arrays["scores"], case.arrays["topk_ids"]
    n_seq = case.params["n_seq"]
    t = scores.shape[0] // n_seq
    rng = np.random.default_rng(seed)
    order = np.concatenate([b * t + rng.permutation(t) for b in rng.permutation(n_seq)])
    order = order.astype(np.int64)
    moved = {"scores": scores[order], "topk_ids": None if ids is None else ids[order]}
    check.check_same(target, "token_permutation", STEM, case, Case(moved, case.params))


@given(case=NONEMPTY.filter(lambda c: c.arrays["topk_ids"] is not None
                            and c.arrays["topk_ids"].shape[1] > 1), seed=S.seeds())
def test_slot_order_does_not_matter(target, case, seed):
    """The k slots of a token are a set: permuting them (never the identity) changes nothing."""
    ids = case.arrays["topk_ids"]
    perm = np.random.default_rng(seed).permutation(ids.shape[1])
    if (perm == np.arange(len(perm))).all():
        perm = np.roll(perm, 1)
    check.check_same(target, "slot_permutation", STEM, case,
                     Case(dict(case.arrays, topk_ids=ids[:, perm]), case.params))
