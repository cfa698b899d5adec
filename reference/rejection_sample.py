"""Rejection sampler reference (Leviathan et al., 2023, Algorithm 1): accept iff u q(x) < p(x),
resample max(p - q, 0) or take the bonus from p_L by inverse CDF; and the exact law of one
step's emitted tokens, by enumeration."""

from __future__ import annotations

import itertools

import numpy as np

from lmspec.reference._numerics import _acc, c, f
from lmspec.spec.rejection_sample import check_args, check_values


def accept_sides(u, q_x, p_x) -> tuple[np.ndarray, np.ndarray]:
    """The two sides of the accept test: (u q(x), p(x))."""
    return f(f(u) * f(q_x)), f(p_x)


def accepts(u, q_x, p_x) -> bool:
    """The accept test, strict and division-free: u q(x) < p(x)."""
    lhs, rhs = accept_sides(u, q_x, p_x)
    return bool(lhs < rhs)


def final_weights(p_row, q_row=None) -> np.ndarray:
    """(V,) weights of the final token: the residual max(p - q, 0) after a rejection (p itself
    where the residual has no mass), or the bonus row p (``q_row`` None)."""
    p_row = f(p_row)
    if q_row is None:
        return p_row
    w = f(np.maximum(f(p_row - f(q_row)), c(0.0)))
    return w if np.any(w > 0) else p_row


def cdf(w) -> np.ndarray:
    """(V,) cumulative sums C_j = w_0 + ... + w_j, in index order (accumulated in float32 or
    wider, rounded to the compute dtype)."""
    return f(np.cumsum(np.asarray(w, dtype=_acc())))


def cdf_sides(w, r) -> tuple[np.ndarray, np.ndarray]:
    """The two sides of the inverse CDF's comparisons: (C (V,), r S)."""
    C = cdf(w)
    return C, f(f(r) * C[-1])


def inverse_cdf(w, r) -> int:
    """min { j : r S < C_j }, S = C_{V-1}; the last j with w_j > 0 if none (rounding only)."""
    C, rs = cdf_sides(w, r)
    below = rs < C
    if below.any():
        return int(np.argmax(below))
    return int(np.flatnonzero(np.asarray(w) > 0)[-1])


def rejection_sample(draft_tokens, draft_probs, target_probs, uniforms, resample_uniforms,
                     lengths=None, *, pad_id=-1):
    check_args(draft_tokens, draft_probs, target_probs, uniforms, resample_uniforms, lengths,
               pad_id=pad_id)
    check_values(draft_tokens, draft_probs, target_probs, uniforms, resample_uniforms, lengths)
    x = np.asarray(draft_tokens, np.int64)
    q, p = f(draft_probs), f(target_probs)  # (B, G, V), (B, G + 1, V)
    b, g, _ = q.shape
    L = np.full(b, g, np.int64) if lengths is None else np.asarray(lengths, np.int64)
    n_accepted = np.zeros(b, np.int64)
    tokens = np.full((b, g + 1), pad_id, np.int64)
    for i in range(b):
        n = 0
        while n < L[i] and accepts(uniforms[i, n], q[i, n, x[i, n]], p[i, n, x[i, n]]):
            tokens[i, n] = x[i, n]
            n += 1
        w = final_weights(p[i, n]) if n == L[i] else final_weights(p[i, n], q[i, n])
        tokens[i, n] = inverse_cdf(w, resample_uniforms[i])
        n_accepted[i] = n
    return n_accepted, tokens


# ----------------------------------------------------------------------------- the exact law


def accept_probability(q_x: float, p_x: float) -> float:
    """P(u q(x) < p(x)) for u ~ U[0, 1): min(1, p/q); 1 at q = 0 < p, 0 at p = 0."""
    if p_x <= 0:
        return 0.0
    return 1.0 if q_x <= p_x else p_x / q_x


def emission_distribution(draft_probs, target_probs) -> dict[tuple[int, ...], float]:
    """The exact law of one request's emitted tokens, {sequence: probability}, in float64.

    ``draft_probs`` (G, V) and ``target_probs`` (G + 1, V) are used as the sampler uses them
    (unnormalized rows included); draft i is drawn from q_i / sum q_i, independently; the
    uniforms are exact U[0, 1). Computed by enumerating every draft sequence x in V^G and
    every stopping position, not from the closed form (tests compare the two)."""
    q = np.asarray(draft_probs, np.float64)
    p = np.asarray(target_probs, np.float64)
    g, v = q.shape[0], p.shape[1]
    law: dict[tuple[int, ...], float] = {}

    def emit(seq: tuple[int, ...], weights: np.ndarray, mass: float) -> None:
        for t in np.flatnonzero(weights > 0):
            key = (*seq, int(t))
            law[key] = law.get(key, 0.0) + mass * weights[t] / weights.sum()

    for x in itertools.product(range(v), repeat=g):
        mass = float(np.prod([q[i, x[i]] / q[i].sum() for i in range(g)]))
        if mass == 0.0:
            continue
        for i in range(g + 1):  # i drafts accepted, then a rejection at i or the bonus
            if i == g:
                emit(x, p[g], mass)
                break
            a = accept_probability(q[i, x[i]], p[i, x[i]])
            resid = np.maximum(p[i] - q[i], 0.0)
            if a < 1.0:
                emit(x[:i], resid if resid.any() else p[i], mass * (1.0 - a))
            mass *= a
            if mass == 0.0:
                break
    return law


def expected_emitted(draft_probs, target_probs) -> float:
    """Leviathan's expected number of emitted tokens, sum_{k=0}^{G} prod_{i<k} alpha_i with
    alpha_i = sum_v min(p_i(v), q_i(v)) (normalized rows, drafts from q)."""
    q = np.asarray(draft_probs, np.float64)
    p = np.asarray(target_probs, np.float64)
    alpha = np.minimum(p[: q.shape[0]], q).sum(-1)
    return float(sum(np.prod(alpha[:k]) for k in range(q.shape[0] + 1)))
