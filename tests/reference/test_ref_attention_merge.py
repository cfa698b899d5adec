"""attention_merge reference vs finite differences, hand values and sdpa over key splits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _refcheck import FD_SETTINGS, assert_close, fd_check
from hypothesis import given

from lmspec.reference import attention_merge, attention_merge_vjp, sdpa
from lmspec.spec import Case, component

STEPS = {"outs": 1e-6, "lses": 1e-6}


@FD_SETTINGS
@given(component("attention_merge").cases())
def test_vjp_matches_finite_differences(case):
    # finite differences cannot step from -inf: a dead split becomes merely negligible here
    # (its exact zero gradient at -inf is checked by hand below)
    lses = np.where(np.isneginf(case.arrays["lses"]), -40.0, case.arrays["lses"])
    fd_check("attention_merge", Case({**case.arrays, "lses": lses}), STEPS)


def test_equal_lses_average_and_add_log_s():
    outs = np.arange(12.0).reshape(3, 1, 1, 1, 4)
    out, lse = attention_merge(outs, np.full((3, 1, 1, 1), 2.0))
    assert_close(out.reshape(-1), outs.mean(axis=0).reshape(-1), rtol=1e-15)
    assert_close(lse.reshape(-1), [2.0 + math.log(3.0)], rtol=1e-15)


def test_dead_splits_are_ignored_and_all_dead_gives_zero_and_minus_inf():
    outs = np.stack([np.full((1, 2, 1, 3), 7.0), np.zeros((1, 2, 1, 3))])
    lses = np.array([[[[1.5], [-np.inf]]], [[[-np.inf], [-np.inf]]]])  # (2, 1, 2, 1)
    out, lse = attention_merge(outs, lses)
    assert_close(out[0, 0, 0], [7.0] * 3, rtol=1e-15)
    assert lse[0, 0, 0] == 1.5 and lse[0, 1, 0] == -np.inf
    assert np.all(out[0, 1] == 0.0)
    g = attention_merge_vjp((np.ones(out.shape), np.ones(lse.shape)), outs, lses)
    assert all(np.all(np.isfinite(a)) for a in g.values())
    assert np.all(g["outs"][:, 0, 1] == 0) and np.all(g["lses"][:, 0, 1] == 0)
    # no split at all
    out, lse = attention_merge(np.zeros((0, 1, 2, 1, 3)), np.zeros((0, 1, 2, 1)))
    assert np.all(out == 0) and np.all(lse == -np.inf)


def test_huge_lses_do_not_overflow():
    outs = np.stack([np.ones((1, 1, 1, 2)), -np.ones((1, 1, 1, 2))])
    out, lse = attention_merge(outs, np.array([1e4, 1e4 - math.log(3.0)]).reshape(2, 1, 1, 1))
    assert_close(out.reshape(-1), [0.5, 0.5], rtol=1e-12)  # weights 3/4 and 1/4
    assert_close(lse.reshape(-1), [1e4 + math.log(4 / 3)], rtol=1e-15)


@pytest.mark.parametrize("splits", [(3,), (1, 2), (2, 2, 2), (0, 4, 1, 2)])
def test_merging_sdpa_over_key_splits_is_sdpa_over_all_keys(splits):
    rng = np.random.default_rng(sum(splits))
    tk = sum(splits)
    q, k, v = (rng.standard_normal(s) * 2 for s in ((2, 3, 2, 4), (2, tk, 2, 4), (2, tk, 2, 5)))
    # segments: some queries see nothing at all in some splits (and query 0 nowhere)
    sq = np.array([[9, 1, 2], [1, 1, 2]])
    skv = rng.integers(1, 3, (2, tk))
    edges = np.cumsum((0,) + splits)
    parts = [sdpa(q, k[:, a:b], v[:, a:b], sq, skv[:, a:b])
             for a, b in zip(edges, edges[1:], strict=False)]
    out, lse = attention_merge(np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]))
    full_out, full_lse = sdpa(q, k, v, sq, skv)
    assert_close(out, full_out, rtol=1e-12, atol=1e-14)
    assert np.array_equal(np.isinf(lse), np.isinf(full_lse))
    assert_close(np.where(np.isinf(lse), 0, lse), np.where(np.isinf(full_lse), 0, full_lse),
                 rtol=1e-12, atol=1e-14)

