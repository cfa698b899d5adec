"""Speculative decoding's rejection sampler, one verification step (Leviathan et al., 2023,
arXiv:2211.17192, Algorithm 1; Chen et al., 2023, arXiv:2302.01318, Algorithm 2): lossless,
driven by explicit uniforms so that every backend emits the same tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, is_integer_array, require, shape_of

PAD_ID = -1  # vLLM's PLACEHOLDER_TOKEN_ID


def rejection_sample(draft_tokens, draft_probs, target_probs, uniforms, resample_uniforms,
                     lengths=None, *, pad_id: int = -1):
    """Verify B requests' draft tokens against the target; returns ``(n_accepted, tokens)``.

    Shapes (G = gamma, the padded number of drafts; V the vocabulary, V >= 1):
    ``draft_tokens`` x (B, G) integer; ``draft_probs`` q (B, G, V) float, the distribution each
    draft was drawn from; ``target_probs`` p (B, G + 1, V) float, the target's distribution at
    each draft position plus one more (the bonus row); ``uniforms`` u (B, G) float, one accept
    uniform per draft; ``resample_uniforms`` r (B,) float, one uniform per request for its one
    final token (resampled or bonus: exactly one of the two happens); ``lengths`` L (B,)
    integer in [0, G], request b's number of drafts (None: all G). Uniforms lie in [0, 1) and
    may come in any float dtype (vLLM draws its accept uniforms in float64, so that a float32
    0.0 is not drawn). Outputs: ``n_accepted`` n (B,) and ``tokens`` (B, G + 1), integers
    (int64; int32 where the framework's default integer is 32-bit, as JAX without x64).

    Padding: for request b, positions i >= L_b of x, q and u, and target rows i > L_b, are
    never read, whatever they hold (any id, -1 say, or garbage); target row L_b is the bonus
    row. (vLLM packs the drafts flat with ``cu_num_draft_tokens`` and samples the bonus from a
    separate logits row; the padded layout holds the same data.)

    Math, per request (index b dropped), all comparisons strict, no division::

        accept draft i  iff  u_i * q_i(x_i) < p_i(x_i)          i = 0, 1, ... while accepted
        n = number of leading accepted drafts (n <= L)
        w = max(p_n - q_n, 0)   if n < L  (the residual at the first rejection)
          = p_n                 if n < L and w == 0 everywhere (p_n <= q_n elementwise)
          = p_L                 if n == L (the bonus row: every draft was accepted)
        C_j = w_0 + ... + w_j (cumulative sums in index order), S = C_{V-1}
        t = min { j : r * S < C_j }                               (inverse CDF)
        tokens = [x_0, ..., x_{n-1}, t, pad_id, ..., pad_id]     (n + 1 emitted)

    For u ~ U[0, 1) the accept probability is min(1, p_i(x_i) / q_i(x_i)) exactly; q_i(x_i) = 0
    accepts iff p_i(x_i) > 0 (ratio +inf), and a token the target gives p = 0 is never accepted,
    even at u = 0. The inverse CDF never picks a token with w_j = 0 (C_j = C_{j-1}), and
    normalizes implicitly (r * S), so no row need sum to 1; rows are used as given. S > 0 for
    every row read (target rows have a positive sum; a residual of zero mass falls back to
    p_n). The fallback is a rule for a measure-zero event: with normalized rows, w == 0 means
    p_n == q_n, where rejection has probability 0 (it happens only for a draft the target
    gives p = 0, i.e. not drawn from q). If no j satisfies the inverse CDF (rounding only:
    fl(r S) < S for r < 1), t is the last j with w_j > 0.

    Lossless theorem (x_i ~ q_i independently of the uniforms, rows normalized): the first
    emitted token is distributed as p_0 exactly; more generally, given that the first k drafts
    were emitted (accepted), the next emitted token is distributed as p_k. The expected number
    of emitted tokens is sum_{k=0}^{L} prod_{i<k} alpha_i, alpha_i = sum_v min(p_i(v), q_i(v))
    (Leviathan's (1 - alpha^(gamma+1)) / (1 - alpha) for equal alpha_i). The reference's
    ``emission_distribution`` computes the exact law of the emitted sequence by enumeration.
    Here q_i and p_i are fixed rows; in a real step they are the models' conditionals given the
    prefix, and the theorem holds conditionally, position by position.

    Top-k / top-p / temperature: q must be the distribution the draft was actually drawn from
    and p the target's distribution actually sampled from (each after its own processing).
    Taking the draft's distribution after top-p while the draft was drawn before it (or the
    other way round) is not lossless.

    Conventions where peers differ:
    - vLLM v1 (``vllm/v1/sample/rejection_sampler.py``): accepts iff ``q(x) > 0 and
      p(x) / q(x) >= u`` (a division, non-strict; q(x) = 0 rejects); the same law, different at
      ties u q = p and at q(x) = 0. Its recovered token is ``argmax(max(p - q, 0) / E)`` with
      E ~ Exp(1) drawn per request and vocabulary entry (an exponential race: the same law as
      the inverse CDF, another map from randomness to tokens, so token-for-token comparison
      with vLLM is impossible by design); an all-zero residual gives the argmax of zeros
      (token 0) there, a draw from p_n here. Its bonus token comes from its ordinary sampler,
      outside the rejection sampler; its padding id is -1 (``pad_id``'s default); drafts
      without probabilities (n-gram) take q(x) = 1 and the residual p with x zeroed: pass
      q = one_hot(x) here for the same rule.
      Greedy requests take a separate path there (draft == target argmax); here one-hot p and
      q give the same tokens through the same rule.
    - HF transformers ``_speculative_sampling`` (assisted generation, batch size 1; 5.x):
      accepts iff ``r < p / q`` (strict, as here, in division form: q(x) = 0 < p(x) accepts,
      0/0 rejects, as here); residual ``clamp(p - q, min=0)`` divided by its sum (no fallback:
      0/0 where p == q), then ``torch.multinomial``.
    - Leviathan et al. reject iff r > p/q (accepting at r == p/q, so at r = 0 a token with
      p(x) = 0); Chen et al. accept iff r < min(1, q(x)/p(x)) in their notation, where q is the
      target and p the draft (strict, as here).

    Knife edges: the outputs are discrete and compared exactly, except where a comparison of
    the reference (float64) lies within the backend dtype's rounding of its two sides:
    u q(x) against p(x), or r S against a C_j. There either outcome is accepted, and the
    backend's later decisions are judged on its own path. The fallback test (any p_n > q_n)
    and zero masses are exact in every precision (a rounded difference keeps its sign).

    Not differentiable (a sampler).

    Rejected: a float ``draft_tokens`` or ``lengths`` (TypeError); shapes that do not match
    (ValueError naming the argument, e.g. ``target_probs`` with G rows instead of G + 1);
    ``lengths`` outside [0, G] (ValueError); a draft id of a real position outside [0, V)
    (IndexError naming ``draft_tokens``); a probability read that is negative or not finite,
    or a target row read that sums to 0 (ValueError naming ``draft_probs`` / ``target_probs``);
    a uniform read outside [0, 1) (ValueError naming ``uniforms`` / ``resample_uniforms``).
    """
    check_args(draft_tokens, draft_probs, target_probs, uniforms, resample_uniforms, lengths,
               pad_id=pad_id)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(draft_tokens, draft_probs, target_probs, uniforms, resample_uniforms,
               lengths=None, *, pad_id: int = -1) -> None:
    """Shapes, dtypes and parameters (no values: those are ``check_values``, on the host)."""
    qs = shape_of(draft_probs)
    require(len(qs) == 3 and qs[2] >= 1, ValueError,
            f"draft_probs: expected shape (B, gamma, V) with V >= 1, got {qs}")
    require(not is_integer_array(draft_probs), TypeError, "draft_probs: expected a float array")
    b, g, v = qs
    require(shape_of(target_probs) == (b, g + 1, v), ValueError,
            f"target_probs: expected shape ({b}, {g + 1}, {v}) = (B, gamma + 1, V), got "
            f"{shape_of(target_probs)}")
    require(not is_integer_array(target_probs), TypeError, "target_probs: expected a float array")
    require(shape_of(draft_tokens) == (b, g), ValueError,
            f"draft_tokens: expected shape ({b}, {g}), got {shape_of(draft_tokens)}")
    require(is_integer_array(draft_tokens), TypeError, "draft_tokens: expected an integer array")
    require(shape_of(uniforms) == (b, g), ValueError,
            f"uniforms: expected shape ({b}, {g}), got {shape_of(uniforms)}")
    require(not is_integer_array(uniforms), TypeError, "uniforms: expected a float array")
    require(shape_of(resample_uniforms) == (b,), ValueError,
            f"resample_uniforms: expected shape ({b},), got {shape_of(resample_uniforms)}")
    require(not is_integer_array(resample_uniforms), TypeError,
            "resample_uniforms: expected a float array")
    if lengths is not None:
        require(shape_of(lengths) == (b,), ValueError,
                f"lengths: expected shape ({b},), got {shape_of(lengths)}")
        require(is_integer_array(lengths), TypeError, "lengths: expected an integer array")
    require(isinstance(pad_id, int) and not isinstance(pad_id, bool), ValueError,
            f"pad_id: expected an integer, got {pad_id!r}")


def check_values(draft_tokens, draft_probs, target_probs, uniforms, resample_uniforms,
                 lengths=None) -> None:
    """The value checks, on NumPy copies (every implementation makes them on the host); only
    the entries the sampler reads are checked (see Padding)."""
    x, q, p = np.asarray(draft_tokens), np.asarray(draft_probs, np.float64), np.asarray(
        target_probs, np.float64)
    u, r = np.asarray(uniforms, np.float64), np.asarray(resample_uniforms, np.float64)
    b, g, v = q.shape
    L = np.full(b, g, np.int64) if lengths is None else np.asarray(lengths).astype(np.int64)
    require(bool(np.all((L >= 0) & (L <= g))), ValueError,
            f"lengths: expected values in [0, {g}], got {L.tolist()}")
    real = np.arange(g)[None, :] < L[:, None]  # (B, G) positions that hold drafts
    bad = real & ((x < 0) | (x >= v))
    require(not bad.any(), IndexError,
            f"draft_tokens: expected ids in [0, {v}) at positions < lengths, got "
            f"{x[bad][:4].tolist()}")
    rows = np.arange(g + 1)[None, :] <= L[:, None]  # (B, G + 1) target rows read
    for name, a, read in (("draft_probs", q, real), ("target_probs", p, rows)):
        vals = a[read]
        require(bool(np.all(np.isfinite(vals) & (vals >= 0))), ValueError,
                f"{name}: expected finite probabilities >= 0 in the rows read")
    require(bool(np.all(p[rows].sum(-1) > 0)), ValueError,
            "target_probs: every row read (i <= lengths) must have a positive sum")
    for name, a in (("uniforms", u[real]), ("resample_uniforms", r)):
        require(bool(np.all((a >= 0) & (a < 1))), ValueError,
                f"{name}: expected values in [0, 1)")


# ----------------------------------------------------------------------------- input domain

# Largest uniform drawn: rounds to a value below 1 in every tested dtype (bfloat16 keeps 8
# significant bits, so values in (1 - 2**-9, 1) round to 1.0 there).
U_MAX = 1.0 - 2.0**-8
ROW_STYLES = ("dirichlet", "sparse", "dyadic", "equal", "peaked")


def prob_rows(rng: np.random.Generator, shape: tuple[int, ...], style: str) -> np.ndarray:
    """Probability rows (..., V) of a style: Dirichlet(1); sparse (zeros, so residuals and
    masses vanish); dyadic (multiples of 1/8 summing to 1: exact in every dtype, so ties
    u q = p and r S = C_j are exact); peaked (a softmax of large logits: tiny entries)."""
    v = shape[-1]
    if style == "dyadic":
        counts = rng.multinomial(8, np.ones(v) / v, size=shape[:-1])
        return counts / 8.0
    if style == "peaked":
        z = rng.standard_normal(shape) * 6.0
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    w = rng.dirichlet(np.ones(v), size=shape[:-1]) if v > 1 else np.ones(shape)
    if style == "sparse" and v > 1:
        keep = rng.uniform(size=shape) < 0.5
        keep[..., 0] |= ~keep.any(-1)  # at least one entry stays
        w = np.where(keep, w, 0.0)
        w = w / w.sum(-1, keepdims=True)
    return w


def draw_from(rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
    """One token per row (..., V), drawn from the normalized row (float64 inverse CDF)."""
    c = np.cumsum(rows / rows.sum(-1, keepdims=True), -1)
    u = rng.uniform(size=rows.shape[:-1] + (1,))
    return np.minimum((c <= u).sum(-1), rows.shape[-1] - 1).astype(np.int64)


def uniform_values(rng: np.random.Generator, shape, style: str) -> np.ndarray:
    """Uniforms in [0, U_MAX]: continuous, or the grid k/8 (0 included: exact ties)."""
    if style == "grid":
        return rng.integers(0, 8, shape) / 8.0
    return rng.uniform(0.0, U_MAX, shape)


@st.composite
def _cases(draw) -> Case:
    b = draw(st.sampled_from((3, 1, 2, 5, 0)))
    g = draw(st.sampled_from((2, 1, 3, 0, 4)))
    v = draw(st.sampled_from((5, 2, 8, 1, 3, 16)))
    style = draw(st.sampled_from(ROW_STYLES))
    rng = np.random.default_rng(draw(S.seeds()))
    q = prob_rows(rng, (b, g, v), "dirichlet" if style == "equal" else style)
    p = prob_rows(rng, (b, g + 1, v), "dirichlet" if style == "equal" else style)
    if style == "equal":  # q == p at some positions: everything accepted there
        same = rng.uniform(size=(b, g)) < 0.7
        p[:, :g] = np.where(same[..., None], q, p[:, :g])
    x = draw_from(rng, q) if draw(st.integers(0, 3)) else rng.integers(0, v, (b, g))
    lengths = None if draw(st.booleans()) else rng.integers(0, g + 1, b)
    if lengths is not None:  # padding holds garbage: it must never be read
        pad = np.arange(g)[None, :] >= lengths[:, None]
        x = np.where(pad, rng.integers(-1, 2 * v, (b, g)), x)
        q = np.where(pad[..., None], rng.uniform(0, 3, q.shape), q)
        p[:, 1:] = np.where(pad[..., None], rng.uniform(0, 3, (b, g, v)), p[:, 1:])
    ustyle = draw(st.sampled_from(("continuous", "grid")))
    return Case({"draft_tokens": np.asarray(x, np.int64), "draft_probs": q, "target_probs": p,
                 "uniforms": uniform_values(rng, (b, g), ustyle),
                 "resample_uniforms": uniform_values(rng, (b,), ustyle),
                 "lengths": None if lengths is None else np.asarray(lengths, np.int64)},
                {"pad_id": draw(st.sampled_from((PAD_ID, 0, 99)))})


def _bad(b=2, g=2, v=3, x=None, q=None, p=None, u=None, r=None, lengths=None, g_target=None):
    def build():
        rows = np.full((b, g, v), 1.0 / v)
        return ({"draft_tokens": np.zeros((b, g), np.int64) if x is None else np.asarray(x),
                 "draft_probs": rows if q is None else np.asarray(q, np.float64),
                 "target_probs": np.full((b, (g_target or g + 1), v), 1.0 / v) if p is None
                 else np.asarray(p, np.float64),
                 "uniforms": np.full((b, g), 0.5) if u is None else np.asarray(u, np.float64),
                 "resample_uniforms": np.full(b, 0.5) if r is None else np.asarray(r),
                 "lengths": None if lengths is None else np.asarray(lengths, np.int64)},
                {"pad_id": PAD_ID})
    return build


COMPONENT = Component(
    stem="rejection_sample",
    coverage={"lengths": ("given", "absent")},
    inputs=("draft_tokens", "draft_probs", "target_probs", "uniforms", "resample_uniforms",
            "lengths"),
    outputs=("n_accepted", "tokens"),
    integer_inputs=("draft_tokens", "lengths"),
    cases=_cases,
    errors=(
        ErrorCase("target_probs with gamma rows, not gamma + 1", _bad(g_target=2), ValueError,
                  r"target_probs"),
        ErrorCase("float draft_tokens", _bad(x=np.zeros((2, 2))), TypeError, r"draft_tokens"),
        ErrorCase("draft id equal to V", _bad(x=[[0, 3], [1, 2]]), IndexError, r"draft_tokens"),
        ErrorCase("a length above gamma", _bad(lengths=[2, 3]), ValueError, r"lengths"),
        ErrorCase("a negative draft probability", _bad(q=np.full((2, 2, 3), -0.5)), ValueError,
                  r"draft_probs"),
        ErrorCase("an accept uniform equal to 1", _bad(u=[[0.5, 1.0], [0.0, 0.5]]), ValueError,
                  r"uniforms"),
        ErrorCase("a negative resample uniform", _bad(r=[0.5, -0.25]), ValueError,
                  r"resample_uniforms"),
        ErrorCase("a target row of zeros", _bad(p=np.zeros((2, 3, 3))), ValueError,
                  r"target_probs"),
    ),
    summary="speculative decoding's rejection sampler: accept iff u q(x) < p(x), resample "
            "max(p - q, 0) by inverse CDF, bonus from p_L",
)


# ------------------------------------------------------------------------ the distribution test

# A sampler's law is checked by Pearson's chi-square test of N runs against the exact law
# (the reference's emission_distribution). Its design, as data:
ALPHA = 1e-3  # false-alarm rate of one distribution test (one backend x dtype), split evenly
#               over the test's examples (Bonferroni)
POWER = 0.99  # chance of failing a sampler whose law is at total variation >= TV from the exact
TV = {"smoke": 0.05, "ci": 0.05, "thorough": 0.025}  # the deviation that must be caught
MIN_EXPECTED = 5.0  # cells expected fewer times are pooled into one (Cochran's rule)


def _gamma_p_series(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x) by its power series (x < a + 1)."""
    term = total = 1.0 / a
    n = a
    while abs(term) > abs(total) * 1e-16:
        n += 1.0
        term *= x / n
        total += term
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gamma_q_fraction(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) by its continued fraction (x >= a + 1),
    modified Lentz (Numerical Recipes, 6.2)."""
    tiny = 1e-300
    b = x + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return h * math.exp(-x + a * math.log(x) - math.lgamma(a))


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for X ~ chi-square(df): Q(df / 2, x / 2), computed exactly (no scipy)."""
    if x <= 0:
        return 1.0
    a, h = df / 2.0, x / 2.0
    return 1.0 - _gamma_p_series(a, h) if h < a + 1.0 else _gamma_q_fraction(a, h)


def chi2_isf(alpha: float, df: int) -> float:
    """The critical value c with chi2_sf(c, df) = alpha (bisection to 1e-12 relative)."""
    lo, hi = 0.0, max(1.0, 2.0 * df)
    while chi2_sf(hi, df) > alpha:
        hi *= 2.0
    while hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if chi2_sf(mid, df) > alpha else (lo, mid)
    return hi


def ncx2_sf(x: float, df: int, nc: float) -> float:
    """P(X > x) for X ~ noncentral chi-square(df, nc): the Poisson(nc / 2) mixture of central
    chi-squares with df + 2j degrees of freedom, summed until the Poisson tail is < 1e-14."""
    half = nc / 2.0
    total, j = 0.0, 0
    weight = math.exp(-half)
    mass = 0.0
    while 1.0 - mass > 1e-14 and j < 100_000:
        total += weight * chi2_sf(x, df + 2 * j)
        mass += weight
        j += 1
        weight *= half / j
        if j > half and weight < 1e-300:
            break
    return total


def power(n: int, cells: int, tv: float, alpha: float) -> float:
    """The smallest power of Pearson's test (``cells`` cells, N = n) against any law at total
    variation ``tv`` from the null: its statistic is asymptotically noncentral chi-square with
    nc = n * sum (p1 - p0)^2 / p0 (Cohen's w^2 = the chi-square divergence), and by
    Cauchy-Schwarz sum (p1 - p0)^2 / p0 >= (sum |p1 - p0|)^2 = (2 tv)^2."""
    df = max(cells - 1, 1)
    return ncx2_sf(chi2_isf(alpha, df), df, 4.0 * n * tv * tv)


def sample_size(cells: int, tv: float, alpha: float, target: float = POWER) -> int:
    """The smallest N whose power (see ``power``) is at least ``target``. Pooling only lowers
    the degrees of freedom, so N is computed unpooled (conservative); the guarantee is against
    deviations visible on the pooled cells."""
    lo, hi = 1, 16
    while power(hi, cells, tv, alpha) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if power(mid, cells, tv, alpha) >= target else (mid, hi)
    return hi


@dataclass(frozen=True)
class PearsonResult:
    statistic: float
    df: int
    p_value: float
    impossible: int  # observations in cells of exact probability 0 (p_value 0 if any)


def pearson_test(counts: np.ndarray, probs: np.ndarray) -> PearsonResult:
    """Pearson's chi-square goodness of fit of ``counts`` (observations per cell) to the exact
    cell probabilities ``probs``. Cells of probability 0 must be empty (any observation there
    rejects outright); cells expected fewer than MIN_EXPECTED times are pooled into one, which
    joins the smallest other cell if it is still below MIN_EXPECTED."""
    counts = np.asarray(counts, np.float64).reshape(-1)
    probs = np.asarray(probs, np.float64).reshape(-1)
    n = counts.sum()
    impossible = int(counts[probs <= 0].sum())
    live = probs > 0
    obs, exp = counts[live], n * probs[live] / probs[live].sum()
    small = exp < MIN_EXPECTED
    if small.any():
        obs = np.append(obs[~small], obs[small].sum())
        exp = np.append(exp[~small], exp[small].sum())
        if exp[-1] < MIN_EXPECTED and len(exp) > 1:
            k = int(np.argmin(exp[:-1]))
            obs[k] += obs[-1]
            exp[k] += exp[-1]
            obs, exp = obs[:-1], exp[:-1]
    df = len(exp) - 1
    stat = float(np.sum((obs - exp) ** 2 / exp)) if df > 0 else 0.0
    p_value = 0.0 if impossible else (chi2_sf(stat, df) if df > 0 else 1.0)
    return PearsonResult(stat, df, p_value, impossible)


def binomial_bounds(n: int, prob: float, tail: float) -> tuple[int, int]:
    """(lo, hi) with P(X < lo) <= tail and P(X > hi) <= tail for X ~ Binomial(n, prob): the
    range a count of rejections (false alarms, or detections at a stated power) must lie in."""
    pmf = [math.comb(n, k) * prob**k * (1 - prob) ** (n - k) for k in range(n + 1)]
    cdf = np.cumsum(pmf)
    lo = int(np.searchsorted(cdf, tail, side="right"))  # the first k with P(X <= k) > tail
    hi = int(np.searchsorted(cdf, 1 - tail, side="left"))  # the first k with P(X > k) <= tail
    return lo, hi
