"""Conformance of rejection_sample: counts and tokens exactly (either outcome only on a measured
knife edge), error inputs, the sampler's properties, and its law by a chi-square test.

Knife edge: the sampler's decisions are comparisons, u q(x) < p(x) and r S < C_j. A backend's
output may differ from the reference's only where one of the comparisons it made lies within
``tau`` of equality, ``tau = 2 x`` the naive error of the two sides in the dtype plus the floor
(4 ulps of the dtype at their scale); its later decisions are judged on its own path. Exact
ties (dyadic inputs, exact in every dtype) are judged with tau = 0: the strict rules hold.

The law: each backend runs N requests of one (p, q) with drafts drawn from q and fresh
uniforms; the (first token, second token or end) cells are tested against the exact law
(``lmspec.reference.rejection_sample.emission_distribution``) by Pearson's chi-square with
pooling, at false-alarm rate ALPHA per backend x dtype (split over the test's examples) and
power POWER against any deviation of total variation TV[profile] (see spec.rejection_sample).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmspec import reference
from lmspec.conformance import _check as check
from lmspec.conformance import _results
from lmspec.spec import Case
from lmspec.spec import _strategies as S
from lmspec.spec import rejection_sample as RS
from lmspec.spec._tolerance import FLOOR_ULPS, floor_for

STEM = RS.COMPONENT.stem
R = importlib.import_module("lmspec.reference.rejection_sample")  # the module, not the function

test_errors = check.standard_tests(RS.COMPONENT)[2]

PROPERTY = settings(max_examples=max(2, settings().max_examples // 4))


def profile() -> str:
    """The hypothesis profile's budget level (the profiles differ in max_examples)."""
    m = settings().max_examples
    return "thorough" if m >= 100 else "ci" if m >= 20 else "smoke"


# ----------------------------------------------------------------------------- knife edges


def _lengths(arrays) -> np.ndarray:
    b, g = arrays["draft_tokens"].shape
    L = arrays["lengths"]
    return np.full(b, g, np.int64) if L is None else np.asarray(L, np.int64)


def _stop_weights(p, q, i: int, k: int, L: int) -> np.ndarray:
    return R.final_weights(p[i, k]) if k == L else R.final_weights(p[i, k], q[i, k])


def comparisons(arrays, dtype=None) -> dict[str, np.ndarray]:
    """What the sampler compares, per request i: ``lhs``/``rhs`` (B, G) = u q(x), p(x) at
    each real draft; ``C`` (B, G + 1, V) and ``rs`` (B, G + 1), the CDF and r S had the step
    stopped at k; ``w`` the weights there. float64 (dtype None) or naive in ``dtype``."""
    if dtype is not None and np.dtype(dtype) == np.float64:  # modelled from float32's
        exact, rough = comparisons(arrays), comparisons(arrays, np.float32)
        return {n: exact[n] + (rough[n] - exact[n]) * 2.0**-29 for n in exact}
    x = arrays["draft_tokens"]
    q, p, u, r = (arrays[n] if dtype is None else arrays[n].astype(dtype) for n in (
        "draft_probs", "target_probs", "uniforms", "resample_uniforms"))
    b, g, v = q.shape
    L = _lengths(arrays)
    out = {"lhs": np.zeros((b, g)), "rhs": np.zeros((b, g)), "C": np.zeros((b, g + 1, v)),
           "rs": np.zeros((b, g + 1)), "w": np.zeros((b, g + 1, v))}
    with reference.computing_in(np.float64 if dtype is None else dtype):
        for i in range(b):
            for k in range(L[i] + 1):
                if k < L[i]:
                    lhs, rhs = R.accept_sides(u[i, k], q[i, k, x[i, k]], p[i, k, x[i, k]])
                    out["lhs"][i, k], out["rhs"][i, k] = lhs, rhs
                w = _stop_weights(p, q, i, k, L[i])
                c, rs = R.cdf_sides(w, r[i])
                out["C"][i, k], out["rs"][i, k], out["w"][i, k] = c, rs, w
    return out


def tolerances(arrays, np_dtype, exact) -> tuple[np.ndarray, np.ndarray]:
    """(tau_accept (B, G), tau_cdf (B, G + 1)): 2 x the naive error of each comparison's sides
    plus the floor at their scale."""
    naive = comparisons(arrays, np_dtype)
    with np.errstate(invalid="ignore"):
        err_acc = np.abs(naive["lhs"] - exact["lhs"]) + np.abs(naive["rhs"] - exact["rhs"])
        err_cdf = (np.abs(naive["C"] - exact["C"]).max(-1, initial=0.0)
                   + np.abs(naive["rs"] - exact["rs"]))
    floor = np.vectorize(lambda s: floor_for(np_dtype, FLOOR_ULPS, float(s)), otypes=[float])
    tau_acc = 2 * err_acc + floor(np.maximum(exact["lhs"], exact["rhs"]))
    tau_cdf = 2 * err_cdf + floor(exact["C"][..., -1])  # at the scale S
    return tau_acc, tau_cdf


def path_reason(i, n, toks, arrays, params, exact, tau_acc, tau_cdf) -> str | None:
    """Why request i's (n, tokens) is not the sampler's output, knife edges allowed (None: it
    is). Checks the structure, then every decision the backend made on its own path."""
    x, L = arrays["draft_tokens"][i], int(_lengths(arrays)[i])
    v, pad = arrays["draft_probs"].shape[2], params["pad_id"]
    if not 0 <= n <= L:
        return f"n_accepted = {n} outside [0, lengths = {L}]"
    if not np.array_equal(toks[:n], x[:n]):
        return f"the first n = {n} tokens {toks[:n].tolist()} are not the drafts {x[:n].tolist()}"
    if np.any(toks[n + 1:] != pad):
        return (f"tokens after the final one (slot {n}) are {toks[n + 1:].tolist()}, not pad_id "
                f"{pad}: one token only follows the accepted drafts (a bonus only after all)")
    t = int(toks[n])
    if not 0 <= t < v:
        return f"final token {t} outside [0, {v})"
    lhs, rhs = exact["lhs"][i], exact["rhs"][i]
    for k in range(n):
        if lhs[k] - rhs[k] >= tau_acc[i, k]:
            return (f"draft {k} accepted, but u q(x) = {lhs[k]!r} >= p(x) = {rhs[k]!r} (margin "
                    f"{lhs[k] - rhs[k]:.3g} beyond tau = {tau_acc[i, k]:.3g})")
    if n < L and rhs[n] - lhs[n] > tau_acc[i, n]:
        return (f"draft {n} rejected, but u q(x) = {lhs[n]!r} < p(x) = {rhs[n]!r} (margin "
                f"{rhs[n] - lhs[n]:.3g} beyond tau = {tau_acc[i, n]:.3g})")
    w, C, rs, tau = exact["w"][i, n], exact["C"][i, n], exact["rs"][i, n], tau_cdf[i, n]
    what = "bonus row p_L" if n == L else f"residual at {n}"
    if w[t] <= 0:
        return f"final token {t} has zero mass in the {what} {w.tolist()}"
    if rs - C[t] >= tau:
        return (f"final token {t}: r S = {rs!r} >= C_{t} = {C[t]!r} in the {what} (a later "
                f"token; tau = {tau:.3g})")
    if t > 0 and C[t - 1] - rs > tau:
        return (f"final token {t}: r S = {rs!r} < C_{t - 1} = {C[t - 1]!r} in the {what} (an "
                f"earlier token; tau = {tau:.3g})")
    return None


# ----------------------------------------------------------------------------- the assertion


def _outputs(target, case: Case, test: str):
    """(inputs as everyone sees them, (n, tokens) as int64 NumPy), or None (unsupported)."""
    check.require_impl(target, STEM)
    arrays = check.rounded(case, STEM, target.np_dtype)
    outs = check.run_case(target, STEM, test, lambda: target.backend.call(
        STEM, check.to_native(target, STEM, arrays), case.params))
    if outs is None:
        return None
    check._expect_count(len(outs), 2, STEM, target, "outputs")
    b, g = arrays["draft_tokens"].shape
    got = []
    for name, o, shape in zip(RS.COMPONENT.outputs, outs, ((b,), (b, g + 1))):
        a = np.asarray(target.backend.to_numpy(o))
        if a.dtype.kind not in "iu" or a.shape != shape:
            check.fail(f"{name}: expected an integer array of shape {shape}, got {a.dtype} of "
                       f"shape {a.shape}", target, STEM, test, name, case)
        got.append(a.astype(np.int64))
    return arrays, got


def check_outputs(target, case: Case, test: str = "forward", exact_ties: bool = False):
    """The backend's (n, tokens) against the reference: equal, or different only on knife
    edges (``exact_ties``: none allowed, tau = 0). Returns them, or None (unsupported)."""
    res = _outputs(target, case, test)
    if res is None:
        return None
    arrays, (n, toks) = res
    ref_n, ref_t = check.reference_outputs(STEM, arrays, case.params)
    if np.array_equal(n, ref_n) and np.array_equal(toks, ref_t):
        _results.record_check(STEM, target, test, "tokens", None)
        return n, toks
    exact = comparisons(arrays)
    if exact_ties:
        tau_acc, tau_cdf = np.zeros(exact["lhs"].shape), np.zeros(exact["rs"].shape)
    else:
        tau_acc, tau_cdf = tolerances(arrays, target.np_dtype, exact)
    for i in range(len(n)):
        why = path_reason(i, int(n[i]), toks[i], arrays, case.params, exact, tau_acc, tau_cdf)
        if why is not None:
            check.fail(f"request {i}: got n_accepted={int(n[i])}, tokens={toks[i].tolist()}; "
                       f"reference {int(ref_n[i])}, {ref_t[i].tolist()}:\n  {why}\n  (another "
                       f"outcome is accepted only within tau of a comparison"
                       f"{': none here, the inputs are exact' if exact_ties else ''})",
                       target, STEM, test, "tokens", case)
    _results.record_check(STEM, target, test, "tokens", None)
    return n, toks


@given(case=RS.COMPONENT.cases())
def test_forward(target, case):
    check_outputs(target, case)


# ----------------------------------------------------------------------------- properties


@st.composite
def dyadic_cases(draw) -> Case:
    """Rows of multiples of 1/8 and uniforms k/8 (0 included): every product, difference and
    cumulative sum is exact in every dtype, and ties u q = p, r S = C_j are common."""
    b, g = draw(st.sampled_from((4, 2, 1))), draw(st.sampled_from((2, 1, 3)))
    v = draw(st.sampled_from((3, 2, 4)))
    rng = np.random.default_rng(draw(S.seeds()))
    q, p = RS.prob_rows(rng, (b, g, v), "dyadic"), RS.prob_rows(rng, (b, g + 1, v), "dyadic")
    x = RS.draw_from(rng, q) if draw(st.booleans()) else rng.integers(0, v, (b, g))
    return Case({"draft_tokens": x, "draft_probs": q, "target_probs": p,
                 "uniforms": RS.uniform_values(rng, (b, g), "grid"),
                 "resample_uniforms": RS.uniform_values(rng, (b,), "grid"), "lengths": None},
                {"pad_id": RS.PAD_ID})


@PROPERTY
@given(case=dyadic_cases())
def test_exact_ties_follow_the_strict_rules(target, case):
    """Where u q(x) == p(x) exactly the draft is rejected, and where r S == C_j the token is
    not j (strict comparisons: a token of zero target mass is never accepted, at u = 0 too,
    and one of zero residual mass never picked). No knife edge: the inputs are exact."""
    check_outputs(target, case, "property-exact-ties", exact_ties=True)


@PROPERTY
@given(case=RS.COMPONENT.cases())
def test_structure(target, case):
    """n_accepted <= lengths <= gamma; the tokens are the n accepted drafts, one final token
    in [0, V), then pad_id: a bonus token only after every draft was accepted."""
    res = _outputs(target, case, "property-structure")
    if res is None:
        return
    arrays, (n, toks) = res
    x, L = arrays["draft_tokens"], _lengths(arrays)
    v, pad = arrays["draft_probs"].shape[2], case.params["pad_id"]
    for i in range(len(n)):
        k = int(n[i])
        bad = (not 0 <= k <= L[i] or not np.array_equal(toks[i, :k], x[i, :k])
               or not 0 <= toks[i, k] < v or np.any(toks[i, k + 1:] != pad))
        if bad:
            check.fail(f"request {i} (lengths {int(L[i])}): n_accepted={k}, tokens="
                       f"{toks[i].tolist()}, drafts {x[i].tolist()}, pad_id {pad}", target, STEM,
                       "property-structure", "tokens", case)
    _results.record_check(STEM, target, "property-structure", "tokens", None)


@PROPERTY
@given(case=RS.COMPONENT.cases(), seed=S.seeds())
def test_draft_equal_to_target_accepts_every_draft(target, case, seed):
    """q_i == p_i and drafts in the support of p: every draft is accepted (u p < p for
    u < 1, exactly, in any round-to-nearest precision) and the final token is the bonus."""
    arrays = dict(case.arrays)
    p = arrays["target_probs"]
    g = arrays["draft_tokens"].shape[1]
    arrays["draft_probs"] = p[:, :g].copy()
    rounded = p[:, :g].astype(check.numpy_dtype(target.dtype)).astype(np.float64)
    drawn = RS.draw_from(np.random.default_rng(seed), np.where(rounded.sum(-1, keepdims=True) > 0,
                                                               rounded, 1.0))
    L = _lengths(arrays)
    real = np.arange(g)[None, :] < L[:, None]
    arrays["draft_tokens"] = np.where(real, drawn, arrays["draft_tokens"])
    support = np.take_along_axis(rounded, drawn[..., None], -1)[..., 0] > 0
    if not np.all(support | ~real):  # a row rounded to zero mass (float16 underflow)
        return
    c = Case(arrays, case.params)
    got = check_outputs(target, c, "property-q-equal-p")
    if got is not None and not np.array_equal(got[0], L):
        check.fail(f"q == p: n_accepted {got[0].tolist()}, expected lengths {L.tolist()}",
                   target, STEM, "property-q-equal-p", "n_accepted", c)


@st.composite
def greedy_cases(draw) -> Case:
    """One-hot p and q (greedy decoding of both models), drafts = argmax q, agreeing with the
    target's argmax often; uniforms 0 half the time (the u = 0 trap)."""
    b, g = draw(st.sampled_from((4, 2, 1))), draw(st.sampled_from((3, 1, 2)))
    v = draw(st.sampled_from((5, 2, 3)))
    rng = np.random.default_rng(draw(S.seeds()))
    top_p = rng.integers(0, v, (b, g + 1))
    top_q = np.where(rng.uniform(size=(b, g)) < 0.7, top_p[:, :g], rng.integers(0, v, (b, g)))
    u = np.where(rng.uniform(size=(b, g)) < 0.5, 0.0, rng.uniform(0, RS.U_MAX, (b, g)))
    r = np.where(rng.uniform(size=b) < 0.5, 0.0, rng.uniform(0, RS.U_MAX, b))
    lengths = None if draw(st.booleans()) else rng.integers(0, g + 1, b)
    return Case({"draft_tokens": top_q, "draft_probs": np.eye(v)[top_q],
                 "target_probs": np.eye(v)[top_p], "uniforms": u, "resample_uniforms": r,
                 "lengths": lengths}, {"pad_id": RS.PAD_ID})


@PROPERTY
@given(case=greedy_cases())
def test_greedy_is_greedy_target_decoding(target, case):
    """One-hot p and q: the emitted tokens are the target's argmax at each position, up to and
    including the first draft that differs from it (or the bonus argmax), whatever the
    uniforms: vLLM's greedy path, through the same rule."""
    res = _outputs(target, case, "property-greedy")
    if res is None:
        return
    arrays, (n, toks) = res
    top_p = arrays["target_probs"].argmax(-1)  # (B, G + 1)
    x, L = arrays["draft_tokens"], _lengths(arrays)
    for i in range(len(n)):
        k = next((j for j in range(L[i]) if x[i, j] != top_p[i, j]), int(L[i]))
        want = np.concatenate([top_p[i, :k + 1], np.full(x.shape[1] - k, RS.PAD_ID)])
        if int(n[i]) != k or not np.array_equal(toks[i], want):
            check.fail(f"request {i}: got n_accepted={int(n[i])}, tokens={toks[i].tolist()}; "
                       f"greedy target decoding gives {k}, {want.tolist()} (drafts "
                       f"{x[i].tolist()}, target argmax {top_p[i].tolist()}, uniforms "
                       f"{arrays['uniforms'][i].tolist()})", target, STEM, "property-greedy",
                       "tokens", case)
    _results.record_check(STEM, target, "property-greedy", "tokens", None)


@PROPERTY
@given(case=RS.COMPONENT.cases(), seed=S.seeds())
def test_padding_is_never_read(target, case, seed):
    """Positions at or beyond lengths (drafts, draft rows, uniforms) and target rows beyond
    lengths refilled with other garbage: the outputs are identical."""
    a = case.arrays
    b, g, v = a["draft_probs"].shape
    rng = np.random.default_rng(seed)
    L = rng.integers(0, g + 1, b) if a["lengths"] is None else a["lengths"]
    pad = np.arange(g)[None, :] >= L[:, None]
    other = dict(a, lengths=L, draft_tokens=np.where(pad, rng.integers(-3, 3 * v, (b, g)),
                                                     a["draft_tokens"]),
                 draft_probs=np.where(pad[..., None], rng.uniform(0, 5, (b, g, v)),
                                      a["draft_probs"]),
                 uniforms=np.where(pad, rng.uniform(0, RS.U_MAX, (b, g)), a["uniforms"]))
    other["target_probs"] = a["target_probs"].copy()
    other["target_probs"][:, 1:] = np.where(pad[..., None], rng.uniform(0, 5, (b, g, v)),
                                            a["target_probs"][:, 1:])
    first = _outputs(target, Case(dict(a, lengths=L), case.params), "property-padding")
    second = _outputs(target, Case(other, case.params), "property-padding")
    if first is None or second is None:
        return
    for name, x1, x2 in zip(RS.COMPONENT.outputs, first[1], second[1]):
        if not np.array_equal(x1, x2):
            check.fail(f"{name} changed when only the padding changed: {x1.tolist()} vs "
                       f"{x2.tolist()} (lengths {L.tolist()})", target, STEM, "property-padding",
                       name, case)
    _results.record_check(STEM, target, "property-padding", "tokens", None)


# ----------------------------------------------------------------------------- the law

LAW_EXAMPLES = {"smoke": 1, "ci": 2, "thorough": 8}[profile()]


def pair_cells(law: dict, v: int) -> np.ndarray:
    """(V (V + 1),) exact probabilities of (first token, second token or end)."""
    probs = np.zeros(v * (v + 1))
    for seq, pr in law.items():
        probs[seq[0] * (v + 1) + (seq[1] if len(seq) > 1 else v)] += pr
    return probs


def observed_cells(tokens: np.ndarray, v: int, pad_id: int) -> tuple[np.ndarray, int]:
    """(counts per cell, outputs in no cell: a token outside [0, V) or a missing first one)."""
    y0, y1 = tokens[:, 0], np.where(tokens[:, 1] == pad_id, v, tokens[:, 1])
    ok = (y0 >= 0) & (y0 < v) & (y1 >= 0) & (y1 <= v)
    counts = np.bincount((y0 * (v + 1) + y1)[ok], minlength=v * (v + 1))
    return counts, int((~ok).sum())


@st.composite
def law_cases(draw) -> Case:
    g, v = draw(st.sampled_from((2, 1))), draw(st.sampled_from((4, 3, 5)))
    rng = np.random.default_rng(draw(S.seeds()))
    return Case({"draft_probs": RS.prob_rows(rng, (g, v), "dirichlet"),
                 "target_probs": RS.prob_rows(rng, (g + 1, v), "dirichlet")},
                {"seed": draw(S.seeds())})


def run_law(target, q, p, n: int, seed: int) -> np.ndarray:
    """(n, G + 1) tokens of n requests with rows q (G, V), p (G + 1, V) as the backend sees
    them, drafts drawn from q, fresh float32 uniforms."""
    rng = np.random.default_rng(seed)
    g, v = q.shape
    x = RS.draw_from(rng, np.broadcast_to(q, (n, g, v)))
    u, r = rng.random((n, g), dtype=np.float32), rng.random(n, dtype=np.float32)
    be = target.backend
    arrays = {"draft_tokens": be.asarray(x, None),
              "draft_probs": be.asarray(np.broadcast_to(q, (n, g, v)), target.dtype),
              "target_probs": be.asarray(np.broadcast_to(p, (n, g + 1, v)), target.dtype),
              "uniforms": be.asarray(u, "float32"), "resample_uniforms": be.asarray(r, "float32"),
              "lengths": None}
    outs = be.call(STEM, arrays, {"pad_id": RS.PAD_ID})
    return np.asarray(be.to_numpy(outs[1])).astype(np.int64)


def law_test(target, q, p, n: int, seed: int) -> tuple[RS.PearsonResult, np.ndarray, np.ndarray]:
    """Pearson's test of the backend's (first, second-or-end) cells against the exact law."""
    v = q.shape[1]
    probs = pair_cells(R.emission_distribution(q, p), v)
    counts, outside = observed_cells(run_law(target, q, p, n, seed), v, RS.PAD_ID)
    res = RS.pearson_test(np.append(counts, outside), np.append(probs, 0.0))
    return res, counts, probs


@settings(max_examples=LAW_EXAMPLES)
@given(case=law_cases())
def test_distribution(target, case):
    """The emitted (first token, second token or end) of N runs, drafts drawn from q, against
    the exact law by Pearson's chi-square: alpha = ALPHA / LAW_EXAMPLES per example, N from
    power POWER against total variation TV[profile] (spec.rejection_sample)."""
    check.require_impl(target, STEM)
    dtype = check.numpy_dtype(target.dtype)
    q, p = (case.arrays[k].astype(dtype).astype(np.float64) for k in ("draft_probs",
                                                                       "target_probs"))
    v = q.shape[1]
    alpha, tv = RS.ALPHA / LAW_EXAMPLES, RS.TV[profile()]
    n = RS.sample_size(v * (v + 1), tv, alpha)
    res = check.run_case(target, STEM, "distribution",
                         lambda: law_test(target, q, p, n, case.params["seed"]))
    if res is None:
        return
    result, counts, probs = res
    _results.record_check(STEM, target, "distribution", "tokens", None)
    if result.p_value >= alpha:
        return
    freq = counts / n
    worst = int(np.argmax(np.abs(freq - probs) / np.sqrt(np.maximum(probs, 1e-12) / n)))
    cell = f"({worst // (v + 1)}, {'end' if worst % (v + 1) == v else worst % (v + 1)})"
    check.fail(f"the emitted tokens' law is not the exact one: chi-square {result.statistic:.4g} "
               f"on {result.df} df, p-value {result.p_value:.3g} < alpha {alpha:.3g} (N = {n}, "
               f"power {RS.POWER} against TV >= {tv}); {result.impossible} outputs in impossible "
               f"cells; empirical TV {0.5 * np.abs(freq - probs).sum():.3g}; worst cell "
               f"(first, second) = {cell}: observed {freq[worst]:.4f}, exact {probs[worst]:.4f}"
               f"\n  q = {q.tolist()}\n  p = {p.tolist()}", target, STEM, "distribution",
               "tokens", case)


# ----------------------------------------------------------------------------- false alarms

FALSE_ALARM_RUNS = 200
FALSE_ALARM_ALPHA = 0.05


def test_false_alarm_rate(target):
    """Thorough profile only: FALSE_ALARM_RUNS law tests at alpha = FALSE_ALARM_ALPHA on fresh
    (p, q) and seeds reject a correct sampler about alpha of the time: the count lies within
    the Binomial(runs, alpha) bounds at 1e-3 each side (too many: the test is anti-conservative
    or the sampler wrong; too few: the test has lost its power)."""
    if profile() != "thorough":
        pytest.skip("the thorough profile measures the false-alarm rate")
    check.require_impl(target, STEM)
    dtype = check.numpy_dtype(target.dtype)
    rng = np.random.default_rng(20260516)
    rejected = 0
    for _ in range(FALSE_ALARM_RUNS):
        g, v = int(rng.integers(1, 3)), int(rng.integers(3, 6))
        q, p = (RS.prob_rows(rng, shape, "dirichlet").astype(dtype).astype(np.float64)
                for shape in ((g, v), (g + 1, v)))
        n = RS.sample_size(v * (v + 1), RS.TV["ci"], FALSE_ALARM_ALPHA)
        result, _, _ = law_test(target, q, p, n, int(rng.integers(2**31)))
        rejected += result.p_value < FALSE_ALARM_ALPHA
    lo, hi = RS.binomial_bounds(FALSE_ALARM_RUNS, FALSE_ALARM_ALPHA, 1e-3)
    print(f"\n{target}: {rejected} of {FALSE_ALARM_RUNS} law tests rejected at alpha "
          f"{FALSE_ALARM_ALPHA} (expected {FALSE_ALARM_RUNS * FALSE_ALARM_ALPHA:g}, "
          f"bounds [{lo}, {hi}])")
    _results.record_check(STEM, target, "false_alarm_rate", "tokens", None)
    assert lo <= rejected <= hi, (f"{rejected} of {FALSE_ALARM_RUNS} rejections at alpha "
                                  f"{FALSE_ALARM_ALPHA}: outside [{lo}, {hi}]")
