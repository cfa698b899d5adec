"""rejection_sample reference: hand-derived outputs and laws, the lossless theorem by exact
enumeration (float64), the closed form of the law, Leviathan's expected length, the reference
sampler's own law by a chi-square test, and the statistics of the distribution test (against
scipy where installed, and by simulation)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from lmspec.reference import rejection_sample
from lmspec.spec import rejection_sample as RS

R = importlib.import_module("lmspec.reference.rejection_sample")


def _one(x, q, p, u, r, lengths=None, pad_id=-1):
    n, toks = rejection_sample(np.asarray([x], np.int64), np.asarray([q], np.float64),
                               np.asarray([p], np.float64), np.asarray([u], np.float64),
                               np.asarray([r], np.float64),
                               None if lengths is None else np.asarray([lengths]), pad_id=pad_id)
    return int(n[0]), toks[0].tolist()


# ----------------------------------------------------------------------------- hand values

Q3 = [0.5, 0.25, 0.25]
P3 = [0.25, 0.5, 0.25]


def test_hand_accept_reject_and_resample():
    # draft 0: u q(x) < p(x) is u * 0.5 < 0.25, i.e. u < 0.5 accepts.
    # u = 0.4 accepts; the bonus row [0, 0, 1] gives token 2 for any r.
    assert _one([0], [Q3], [P3, [0, 0, 1]], [0.4], 0.9) == (1, [0, 2])
    # u = 0.5: 0.25 < 0.25 is false (strict): rejected; residual max(p - q, 0) = [0, .25, 0]
    # has its mass on token 1 only, whatever r.
    assert _one([0], [Q3], [P3, [0, 0, 1]], [0.5], 0.0) == (0, [1, -1])
    assert _one([0], [Q3], [P3, [0, 0, 1]], [0.5], 0.99, pad_id=7) == (0, [1, 7])
    # draft 1: p/q = 2, accepted for every u < 1
    assert _one([1], [Q3], [P3, [1, 0, 0]], [0.999], 0.3) == (1, [1, 0])


def test_hand_inverse_cdf_is_strict_and_skips_zero_mass():
    # bonus row w = [.25, .25, .5]: C = [.25, .5, 1]; t = min { j : r < C_j }
    w = [0.25, 0.25, 0.5]
    assert _one([], np.zeros((0, 3)), [w], [], 0.0) == (0, [0])
    assert _one([], np.zeros((0, 3)), [w], [], 0.25) == (0, [1])  # r S == C_0: not token 0
    assert _one([], np.zeros((0, 3)), [w], [], 0.5) == (0, [2])  # r S == C_1: not token 1
    # a leading zero-mass token is never picked, at r = 0 neither: C = [0, .5, 1]
    assert _one([], np.zeros((0, 3)), [[0.0, 0.5, 0.5]], [], 0.0) == (0, [1])
    # unnormalized rows: S = 4, r S = 2 = C_1 -> token 2
    assert _one([], np.zeros((0, 3)), [[1.0, 1.0, 2.0]], [], 0.5) == (0, [2])


def test_hand_zero_probabilities():
    # p(x) = 0 is never accepted, even at u = 0 (0 * q < 0 is false); the residual
    # max([0, .5, .5] - [.5, .25, .25], 0) = [0, .25, .25] -> C = [0, .25, .5], r S = .4 -> 2
    assert _one([0], [Q3], [[0, 0.5, 0.5], [1, 0, 0]], [0.0], 0.8) == (0, [2, -1])
    # q(x) = 0 < p(x): the ratio is +inf, accepted even at u -> 1
    assert _one([2], [[0.5, 0.5, 0.0]], [P3, [0, 1, 0]], [0.99], 0.1) == (1, [2, 1])


def test_hand_fallback_to_p_when_the_residual_has_no_mass():
    # q == p with a draft of zero mass: rejected (p(x) = 0), the residual is all zero, so the
    # final token comes from p itself: C = [.5, .5, 1], r = .7 -> token 2
    row = [0.5, 0.0, 0.5]
    assert _one([1], [row], [row, [1, 0, 0]], [0.3], 0.7) == (0, [2, -1])


def test_hand_batch_with_padding():
    # request 0 has 1 draft of 2 (padding holds id -1 and garbage rows); request 1 has 0:
    # its final token is the bonus from target row 0.
    x = np.array([[1, -1], [-1, -1]])
    q = np.array([[Q3, [9, 9, 9]], [[9, 9, 9], [9, 9, 9]]], np.float64)
    p = np.array([[P3, [0, 0, 1], [5, 5, 5]], [[0, 1, 0], [3, 3, 3], [3, 3, 3]]], np.float64)
    u = np.array([[0.1, 7.0], [7.0, 7.0]])  # padding uniforms are never read
    n, toks = rejection_sample(x, q, p, u, np.array([0.5, 0.5]), np.array([1, 0]))
    # request 0: draft 1 accepted (p/q = 2); bonus from row 1 = [0, 0, 1] -> 2
    # request 1: no draft; bonus from row 0 = [0, 1, 0] -> 1
    assert n.tolist() == [1, 0]
    assert toks.tolist() == [[1, 2, -1], [1, -1, -1]]


# ----------------------------------------------------------------------------- the exact law


def test_hand_law_of_one_step():
    # V = 2, G = 1, q_0 = (1/2, 1/2), p_0 = (3/4, 1/4), p_1 = (1/5, 4/5).
    # draft 0 (prob 1/2): min(1, .75/.5) = 1, accepted -> then the bonus from p_1:
    #   (0, 0): 1/2 * 1/5 = 0.1, (0, 1): 1/2 * 4/5 = 0.4
    # draft 1 (prob 1/2): min(1, .25/.5) = 1/2 -> accepted: (1, 0) = 1/4 * 1/5 = 0.05,
    #   (1, 1) = 1/4 * 4/5 = 0.2; rejected (1/4): residual max(p_0 - q_0, 0) = (1/4, 0)
    #   -> token 0: (0,) = 0.25.
    law = R.emission_distribution([[0.5, 0.5]], [[0.75, 0.25], [0.2, 0.8]])
    want = {(0, 0): 0.1, (0, 1): 0.4, (1, 0): 0.05, (1, 1): 0.2, (0,): 0.25}
    assert law.keys() == want.keys()
    for k, v in want.items():
        assert law[k] == pytest.approx(v, abs=1e-15)
    # first token: 0.1 + 0.4 + 0.25 = 0.75 = p_0(0); expected length 2 * .75 + 1 * .25 = 1.75
    # = 1 + alpha, alpha = min(.5, .75) + min(.5, .25) = .75
    assert R.expected_emitted([[0.5, 0.5]], [[0.75, 0.25], [0.2, 0.8]]) == pytest.approx(1.75)


def _rows(rng, g, v):
    return RS.prob_rows(rng, (g, v), "dirichlet"), RS.prob_rows(rng, (g + 1, v), "dirichlet")


@pytest.mark.parametrize("g,v", [(1, 2), (1, 5), (2, 3), (3, 4), (2, 6)])
def test_lossless_first_token_and_every_conditional(g, v):
    """P(first = t) = p_0(t), and given the first k tokens were accepted drafts s, the next is
    distributed as p_k: sum over sequences starting (s, t) = A_k(s) p_k(t)."""
    rng = np.random.default_rng(g * 10 + v)
    for style in ("dirichlet", "sparse", "dyadic"):
        q, p = RS.prob_rows(rng, (g, v), style), RS.prob_rows(rng, (g + 1, v), style)
        law = R.emission_distribution(q, p)
        assert sum(law.values()) == pytest.approx(1.0, abs=1e-14)
        for k in range(g + 1):
            for s in np.ndindex(*(v,) * k):
                reach = sum(m for seq, m in law.items() if len(seq) > k and seq[:k] == s)
                nxt = [sum(m for seq, m in law.items() if len(seq) > k and seq[:k + 1] == (*s, t))
                       for t in range(v)]
                np.testing.assert_allclose(nxt, reach * p[k], rtol=0, atol=1e-15)


def test_law_equals_its_closed_form():
    """Enumeration against the product formula: a sequence stopping with a rejection at k has
    mass prod_{i<k} min(p_i, q_i)(s_i) * max(p_k - q_k, 0)(t); the full one ends with p_G(t)."""
    rng = np.random.default_rng(7)
    for g, v in ((1, 3), (2, 4), (3, 3)):
        q, p = _rows(rng, g, v)
        law = R.emission_distribution(q, p)
        for seq, mass in law.items():
            k = len(seq) - 1
            pre = np.prod([min(p[i, s], q[i, s]) for i, s in enumerate(seq[:k])])
            last = p[g, seq[k]] if k == g else max(p[k, seq[k]] - q[k, seq[k]], 0.0)
            assert mass == pytest.approx(pre * last, abs=1e-15)


def test_expected_length_is_leviathans():
    rng = np.random.default_rng(3)
    for g, v in ((1, 4), (3, 3), (2, 5)):
        q, p = _rows(rng, g, v)
        law = R.emission_distribution(q, p)
        mean = sum(len(seq) * m for seq, m in law.items())
        assert R.expected_emitted(q, p) == pytest.approx(mean, abs=1e-14)
    # equal alpha at every position: (1 - alpha^(G + 1)) / (1 - alpha)
    row_q, row_p = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.3, 0.5])
    alpha = 0.2 + 0.3 + 0.1
    q, p = np.tile(row_q, (3, 1)), np.tile(row_p, (4, 1))
    assert R.expected_emitted(q, p) == pytest.approx((1 - alpha**4) / (1 - alpha))


def test_q_equal_p_emits_every_draft_and_the_bonus():
    rng = np.random.default_rng(5)
    _, p = _rows(rng, 2, 4)
    law = R.emission_distribution(p[:2], p)
    assert all(len(seq) == 3 for seq in law)  # never a rejection
    first = np.zeros(4)
    for seq, m in law.items():
        first[seq[0]] += m
    np.testing.assert_allclose(first, p[0], atol=1e-15)


def test_the_reference_samplers_law_by_chi_square():
    """The reference sampler itself against its exact law (the conformance test's design,
    alpha 1e-3, power 0.99 against TV 0.05), on one fixed draw."""
    rng = np.random.default_rng(11)
    g, v = 2, 3
    q, p = _rows(rng, g, v)
    n = RS.sample_size(v * (v + 1), 0.05, 1e-3)
    x = RS.draw_from(rng, np.broadcast_to(q, (n, g, v)))
    _, toks = rejection_sample(x, np.broadcast_to(q, (n, g, v)), np.broadcast_to(p, (n, g + 1, v)),
                               rng.random((n, g)), rng.random(n))
    cells = toks[:, 0] * (v + 1) + np.where(toks[:, 1] < 0, v, toks[:, 1])
    probs = np.zeros(v * (v + 1))
    for seq, m in R.emission_distribution(q, p).items():
        probs[seq[0] * (v + 1) + (seq[1] if len(seq) > 1 else v)] += m
    result = RS.pearson_test(np.bincount(cells, minlength=v * (v + 1)), probs)
    assert result.p_value >= 1e-3, result


# ----------------------------------------------------------------------------- the statistics


def test_chi_square_functions_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 11, 29, 60):
        for x in (0.01, 0.7, 3.0, df * 1.0, 2.5 * df + 10):
            assert RS.chi2_sf(x, df) == pytest.approx(stats.chi2.sf(x, df), rel=1e-10, abs=1e-300)
            for nc in (0.5, 10.0, 80.0):
                assert RS.ncx2_sf(x, df, nc) == pytest.approx(stats.ncx2.sf(x, df, nc), rel=1e-8,
                                                              abs=1e-13)
        for alpha in (1e-3, 0.05, 0.5):
            assert RS.chi2_isf(alpha, df) == pytest.approx(stats.chi2.isf(alpha, df), rel=1e-9)


def test_chi_square_hand_values():
    # df = 2: chi2 is Exp(1/2), P(X > x) = exp(-x / 2); df = 1: P(X > 1) = erfc(1 / sqrt 2)
    import math

    assert RS.chi2_sf(3.0, 2) == pytest.approx(math.exp(-1.5), rel=1e-13)
    assert RS.chi2_sf(1.0, 1) == pytest.approx(math.erfc(1 / math.sqrt(2)), rel=1e-13)
    assert RS.chi2_isf(0.05, 2) == pytest.approx(-2 * math.log(0.05), rel=1e-11)
    # nc = 0 is the central distribution
    assert RS.ncx2_sf(4.0, 3, 0.0) == pytest.approx(RS.chi2_sf(4.0, 3), rel=1e-13)


def test_sample_size_is_the_smallest_with_the_power():
    for cells, tv, alpha in ((12, 0.05, 1e-3), (30, 0.05, 5e-4), (20, 0.1, 0.05)):
        n = RS.sample_size(cells, tv, alpha)
        assert RS.power(n, cells, tv, alpha) >= RS.POWER > RS.power(n - 1, cells, tv, alpha)


def _balanced_alternative(p0, tv, rng):
    """p1 at total variation tv from p0 with the smallest chi-square divergence the bound
    allows (mass moved between two halves of about equal probability): 4 tv^2 <= chi2."""
    order = rng.permutation(len(p0))
    half = np.zeros(len(p0), bool)
    half[order[np.searchsorted(np.cumsum(p0[order]), 0.5) + 1:]] = True
    m_a, m_b = p0[~half].sum(), p0[half].sum()
    return np.where(half, p0 * (1 - tv / m_b), p0 * (1 + tv / m_a))


def test_power_and_false_alarms_by_simulation():
    """Multinomial samples: the pooled Pearson test rejects the null about alpha of the time,
    and a law at TV = 0.05 (balanced, the least favourable shape) at least POWER of the time,
    at the N sample_size chose. Counts judged by binomial bounds at 1e-3."""
    rng = np.random.default_rng(2024)
    p0 = RS.prob_rows(rng, (12,), "dirichlet")
    alpha, tv, runs = 0.05, 0.05, 400
    n = RS.sample_size(len(p0), tv, alpha)
    p1 = _balanced_alternative(p0, tv, rng)
    assert 0.5 * np.abs(p1 - p0).sum() == pytest.approx(tv)
    null = sum(RS.pearson_test(rng.multinomial(n, p0), p0).p_value < alpha for _ in range(runs))
    alt = sum(RS.pearson_test(rng.multinomial(n, p1), p0).p_value < alpha for _ in range(runs))
    lo, hi = RS.binomial_bounds(runs, alpha, 1e-3)
    assert lo <= null <= hi, (null, lo, hi)
    assert alt >= RS.binomial_bounds(runs, RS.POWER, 1e-3)[0], alt


def test_pearson_pools_small_cells_and_rejects_impossible_ones():
    probs = np.array([0.5, 0.49, 0.004, 0.006, 0.0])
    res = RS.pearson_test(np.array([50, 49, 1, 0, 0]), probs)  # N = 100: cells 3, 4 pooled
    # pooled expected 1.0 < 5 joins the smallest other cell (49): two cells, df = 1;
    # observed (50, 50) vs expected (50, 50): statistic 0
    assert res.df == 1 and res.statistic == pytest.approx(0.0) and res.p_value == 1.0
    assert RS.pearson_test(np.array([50, 49, 0, 0, 1]), probs).p_value == 0.0  # p = 0 cell
