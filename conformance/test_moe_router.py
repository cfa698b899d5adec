"""Conformance of moe_router: ids exactly (either choice only on a measured knife edge), weights
and scores under the tolerance policy, the gradient, error inputs, and the router's properties.

Knife edge: a row's ids may differ from the reference's only where the backend's rounding can
reorder the selection scores u = s + bias: two u within ``tau`` (or two group scores within
``2 tau``), with ``tau = 2 x`` the row's naive error of u plus the floor (4 ulps of the dtype at
max |u|). Experts with identical inputs (same logit and bias, or both in masked groups) are
exact ties for every backend and must follow the spec's rule: lowest index first. Weights and
gradients are then judged at the backend's own ids.
"""

from __future__ import annotations

import importlib
import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lmspec import reference
from lmspec.conformance import _check as check
from lmspec.conformance import _inputs, _results
from lmspec.spec import Case
from lmspec.spec import _strategies as S
from lmspec.spec._tolerance import FLOOR_ULPS, floor_for, judge
from lmspec.spec.moe_router import COMPONENT

STEM = COMPONENT.stem
R = importlib.import_module("lmspec.reference.moe_router")  # the module, not the function

test_errors = check.standard_tests(COMPONENT)[2]

# The properties run a quarter of the profile's examples (jax compiles each new shape and
# top_k: ~0.5 s a case), the forward and gradient tests all of them.
PROPERTY = settings(max_examples=max(2, settings().max_examples // 4))


# ----------------------------------------------------------------------------- reference sides


def _at(arrays, params, ids, dtype=None):
    """Reference (weights, scores) at the given ids: float64, or naive in ``dtype``."""
    if dtype is not None and np.dtype(dtype) == np.float64:
        return _inputs._modelled_f64(_at(arrays, params, ids), _at(arrays, params, ids, np.float32))
    logits = arrays["logits"] if dtype is None else arrays["logits"].astype(dtype)
    with reference.computing_in(np.float64 if dtype is None else dtype):
        s = R.router_scores(logits, params["score_func"])
        w = R.weights_at(s, ids, norm_topk_prob=params["norm_topk_prob"],
                         routed_scaling_factor=params["routed_scaling_factor"])
    return np.asarray(w, np.float64), np.asarray(s, np.float64)


def _selection(arrays, params, dtype=None):
    """u = s + bias in float64 (dtype None) or naive in ``dtype`` (modelled for float64)."""
    if dtype is not None and np.dtype(dtype) == np.float64:
        u, u32 = _selection(arrays, params), _selection(arrays, params, np.float32)
        return u + (u32 - u) * 2.0**-29
    cast = {n: (a if a is None or dtype is None else a.astype(dtype)) for n, a in arrays.items()}
    with reference.computing_in(np.float64 if dtype is None else dtype):
        s = R.router_scores(cast["logits"], params["score_func"])
        return np.asarray(R.selection_scores(s, cast["bias"]), np.float64)


def row_tolerance(arrays, params, np_dtype) -> np.ndarray:
    """(N,) tau: how far the backend's rounding may move a selection score u, per row."""
    u = _selection(arrays, params)
    with np.errstate(invalid="ignore"):
        naive_err = np.abs(_selection(arrays, params, np_dtype) - u).max(axis=-1, initial=0.0)
    scale = np.abs(u).max(axis=-1, initial=0.0)
    floors = np.array([floor_for(np_dtype, FLOOR_ULPS, float(m)) for m in scale])
    return 2.0 * naive_err + floors


# ----------------------------------------------------------------------------- the ids rule


def _same_inputs(logits, bias, a: int, b: int) -> bool:
    return logits[a] == logits[b] and (bias is None or bias[a] == bias[b])


def _valid_for_groups(got, u, logits, bias, kept, params, tau) -> str | None:
    """Why ``got`` is not a tau-valid top-k of u with the groups ``kept`` (None: it is)."""
    e, g = len(u), params["n_group"]
    in_kept = np.repeat(np.isin(np.arange(g), kept), e // g)
    fill = 0.0 if params["masked_group_fill"] == "zero" else -np.inf
    sel = np.where(in_kept, u, fill)

    def exact_tie(a, b):
        both_masked = not in_kept[a] and not in_kept[b]
        both_kept = in_kept[a] and in_kept[b]
        return both_masked or (both_kept and _same_inputs(logits, bias, a, b))

    if not np.all(np.isfinite(sel[got])):
        return f"expert(s) {[int(i) for i in got if not in_kept[i]]} lie in dropped groups"
    for a, b in zip(got[:-1], got[1:]):
        if sel[a] < sel[b] - 2 * tau:
            return f"slots out of order: u[{a}]={sel[a]!r} before u[{b}]={sel[b]!r}"
        if exact_tie(a, b) and a > b:
            return f"tie rule: experts {b} and {a} tie exactly, the lower index comes first"
    rest = np.setdiff1d(np.arange(e), got)
    for r in rest:
        worst = got[np.argmin(sel[got])]
        if sel[r] > sel[worst] + 2 * tau:
            return (f"expert {r} (u={sel[r]!r}) left out for expert {worst} (u={sel[worst]!r}), "
                    f"margin {sel[r] - sel[worst]:.3g} > 2 tau = {2 * tau:.3g}")
        if any(exact_tie(r, x) and r < x for x in got):
            return f"tie rule: expert {r} ties exactly with a chosen higher index"
    return None


def ids_reason(got, ref, u, logits, bias, params, tau) -> str | None:
    """None when row ``got`` is acceptable: equal to ``ref``, or another valid choice on a
    knife edge (some set of kept groups within 2 tau x 2 of the boundary, experts within 2 tau)."""
    if np.array_equal(got, ref):
        return None
    e, k = len(u), params["top_k"]
    if len(got) != k or len(set(got.tolist())) != k or got.min() < 0 or got.max() >= e:
        return f"not {k} distinct experts in [0, {e})"
    g, tg = params["n_group"], params["topk_group"]
    candidates = [tuple(range(g))]
    if g > 1:
        top2 = -np.sort(-u.reshape(g, e // g), axis=-1)[:, :2]
        gs = top2.sum(-1)
        candidates = [kept for kept in itertools.combinations(range(g), tg)
                      if min(gs[list(kept)]) >= np.max(np.delete(gs, kept), initial=-np.inf)
                      - 4 * tau]
    reasons = [_valid_for_groups(got, u, logits, bias, kept, params, tau) for kept in candidates]
    return None if any(r is None for r in reasons) else reasons[0]


def checked_ids(target, case, arrays, got_ids) -> np.ndarray:
    """The backend's ids as int64, after the exact/knife-edge rule; fails the test otherwise."""
    params = case.params
    got = np.asarray(got_ids)
    if got.dtype.kind not in "iu":
        check.fail(f"topk_ids: expected an integer array, got dtype {got.dtype}", target, STEM,
                   "forward", "topk_ids", case)
    ref = reference_ids(arrays, params)
    if got.shape != ref.shape:
        check.fail(f"topk_ids: shape {got.shape}, expected {ref.shape}", target, STEM, "forward",
                   "topk_ids", case)
    got = got.astype(np.int64)
    u = _selection(arrays, params)
    tau = row_tolerance(arrays, params, target.np_dtype)
    logits, bias = arrays["logits"], arrays["bias"]
    for r in range(len(got)):
        why = ids_reason(got[r], ref[r], u[r], logits[r], bias, params, float(tau[r]))
        if why is not None:
            check.fail(f"topk_ids differ from the reference at row {r}: got {got[r].tolist()}, "
                       f"reference {ref[r].tolist()}; {why}\n  (either choice is accepted only "
                       f"where selection scores are within tau = {tau[r]:.3g} of each other)",
                       target, STEM, "forward", "topk_ids", case)
    _results.record_check(STEM, target, "forward", "topk_ids", None)
    return got


def reference_ids(arrays, params) -> np.ndarray:
    return np.asarray(check.reference_outputs(STEM, arrays, params)[0], np.int64)


# ----------------------------------------------------------------------------- forward, backward


def _grad_at(cts, logits, ids, kw, dtype=None) -> np.ndarray:
    """Reference d logits at the given ids: float64, or naive in ``dtype``."""
    if dtype is not None and np.dtype(dtype) == np.float64:
        return _inputs._modelled_f64([_grad_at(cts, logits, ids, kw)],
                                   [_grad_at(cts, logits, ids, kw, np.float32)])[0]
    if dtype is None:
        return np.asarray(R.vjp_at(cts, logits, ids, **kw), np.float64)
    low = [None] + [c.astype(dtype) for c in cts[1:]]
    with reference.computing_in(dtype):
        return np.asarray(R.vjp_at(low, logits.astype(dtype), ids, **kw), np.float64)


def _run(target, case, arrays, test):
    return check.run_case(target, STEM, test, lambda: target.backend.call(
        STEM, check.to_native(target, STEM, arrays), case.params))


@given(case=COMPONENT.cases())
def test_forward(target, case):
    _check_forward(target, case)


@st.composite
def negative_corrected_cases(draw) -> Case:
    """Group-limited sigmoid routing whose corrected scores u = s + bias are mostly negative
    (bias about -1): where the two fills disagree (0.0 outranks every kept expert)."""
    e = draw(st.sampled_from((8, 4, 6)))
    g = draw(st.sampled_from([d for d in (2, 4, 3) if e % d == 0 and e // d >= 2]))
    tg = draw(st.integers(1, g - 1))
    logits = draw(S.float_arrays((draw(st.sampled_from((3, 1, 5))), e),
                                 styles=("normal", "uniform"), scales=(1.0, 4.0)))
    bias = draw(S.float_arrays((e,), styles=("normal",), scales=(0.1, 0.5))) - 1.0
    return Case({"logits": logits, "bias": bias}, {
        "top_k": draw(st.integers(1, tg * (e // g))), "score_func": "sigmoid",
        "norm_topk_prob": draw(st.booleans()), "n_group": g, "topk_group": tg,
        "routed_scaling_factor": 1.0,
        "masked_group_fill": draw(st.sampled_from(("-inf", "zero")))})


@PROPERTY
@given(case=negative_corrected_cases())
def test_forward_with_negative_corrected_scores(target, case):
    """The forward check on the cases that separate the fills: "-inf" keeps the kept groups,
    "zero" (HF's quirk) prefers the masked experts' 0.0 to a negative corrected score."""
    _check_forward(target, case)


def _check_forward(target, case):
    check.require_impl(target, STEM)
    arrays = check.rounded(case, STEM, target.np_dtype)
    outs = _run(target, case, arrays, "forward")
    if outs is None:
        return
    check._expect_count(len(outs), 3, STEM, target, "outputs")
    ids = checked_ids(target, case, arrays, target.backend.to_numpy(outs[0]))
    ref = _at(arrays, case.params, ids)
    naive = _at(arrays, case.params, ids, target.np_dtype)
    for name, got, r, n in zip(("topk_weights", "scores"), outs[1:], ref, naive):
        got_np = target.backend.to_numpy(got)
        verdict = judge(got_np, r, n, out_dtype=check.output_dtype(got_np, target), kind="output",
                        backend=target.backend.name, component=STEM, dtype=target.dtype)
        check.settle(verdict, target, STEM, "forward", name, case)


@given(case=COMPONENT.cases(), seed=S.seeds())
def test_backward(target, case, seed):
    check.require_impl(target, STEM, grad=True)
    arrays = check.rounded(case, STEM, target.np_dtype)
    outs = _run(target, case, arrays, "gradient")
    if outs is None:
        return
    ids = checked_ids(target, case, arrays, target.backend.to_numpy(outs[0]))
    rng = np.random.default_rng(seed)
    cts = [None] + [rng.standard_normal(np.shape(o)).astype(target.np_dtype).astype(np.float64)
                    for o in _at(arrays, case.params, ids)]
    native = check.to_native(target, STEM, arrays)
    grads = check.run_case(target, STEM, "gradient", lambda: target.backend.vjp(
        STEM, native, case.params, check._native_cts(target, STEM, cts), ("logits",)))
    if grads is None:
        return
    kw = {k: case.params[k] for k in ("score_func", "norm_topk_prob", "routed_scaling_factor")}
    ref = _grad_at(cts, arrays["logits"], ids, kw)
    naive = _grad_at(cts, arrays["logits"], ids, kw, target.np_dtype)
    mag = float(np.abs(R.vjp_magnitude_at(cts, arrays["logits"], ids, **kw)).max(initial=0.0))
    got_np = target.backend.to_numpy(grads["logits"])
    verdict = judge(got_np, ref, naive, out_dtype=check.output_dtype(got_np, target),
                    kind="gradient", backend=target.backend.name, component=STEM,
                    dtype=target.dtype, magnitude=mag)
    check.settle(verdict, target, STEM, "gradient", "logits", case, extra={"ct_seed": seed})


# ----------------------------------------------------------------------------- properties


def _dense(o) -> np.ndarray:
    """(N, E): each token's weights scattered back to expert positions."""
    ids, w, s = o
    out = np.zeros(s.shape)
    np.put_along_axis(out, np.asarray(ids, np.int64), w, axis=-1)
    return out


def _near_tie(arrays, params, np_dtype) -> bool:
    """True when any row's selection sits on a knife edge (or an exact tie) for this dtype."""
    u = R.masked_selection(_selection(arrays, params), n_group=params["n_group"],
                           topk_group=params["topk_group"],
                           masked_group_fill=params["masked_group_fill"])
    tau = row_tolerance(arrays, params, np_dtype)
    k, e, g = params["top_k"], u.shape[1], params["n_group"]
    full = _selection(arrays, params)
    for r in range(u.shape[0]):
        srt = -np.sort(-u[r])
        gaps = np.diff(srt[: min(k + 1, e)]) if e > 1 else np.zeros(0)
        if np.any(-gaps <= 2 * tau[r]):
            return True
        if g > 1:
            gs = np.sort((-np.sort(-full[r].reshape(g, e // g), axis=-1)[:, :2]).sum(-1))[::-1]
            if np.any(-np.diff(gs) <= 4 * tau[r]):
                return True
    return False


@PROPERTY
@given(case=COMPONENT.cases())
def test_top_k_all_experts_is_the_dense_weighted_sum(target, case):
    """top_k == E, no groups, no renormalization: the weights scattered back to their experts
    are routed_scaling_factor * scores (every expert, weighted by its own score)."""
    e = case.arrays["logits"].shape[1]
    params = dict(case.params, top_k=e, n_group=1, topk_group=1, norm_topk_prob=False)
    c = Case(case.arrays, params)
    scale = params["routed_scaling_factor"]
    check.check_same(target, "top_k_all_dense", STEM, c, c, view_a=_dense,
                     view_b=lambda o: scale * o[2])


@PROPERTY
@given(case=COMPONENT.cases(), seed=S.seeds())
def test_permuting_experts_permutes_ids_only(target, case, seed):
    """Relabelling experts (logit and bias columns together; within groups and groups as
    blocks, so the group structure is kept) relabels the ids and changes nothing else. Checked
    away from ties: the lowest-index tie rule is by design not relabelling-invariant."""
    arrays, params = case.arrays, case.params
    if _near_tie(check.rounded(case, STEM, target.np_dtype), params, target.np_dtype):
        return
    e, g = arrays["logits"].shape[1], params["n_group"]
    rng = np.random.default_rng(seed)
    m = e // g
    perm = np.concatenate([b * m + rng.permutation(m) for b in rng.permutation(g)])
    inv = np.argsort(perm)
    moved = {"logits": arrays["logits"][:, perm],
             "bias": None if arrays["bias"] is None else arrays["bias"][perm]}
    check.check_same(target, "expert_permutation", STEM, case, Case(moved, params),
                     view_a=lambda o: np.concatenate([_dense(o), o[2]], axis=-1),
                     view_b=lambda o: np.concatenate([_dense(o)[:, inv], o[2][:, inv]], axis=-1))


@PROPERTY
@given(case=COMPONENT.cases())
def test_normalized_weights_sum_to_the_scaling_factor(target, case):
    """With norm_topk_prob, each token's weights sum to routed_scaling_factor (rows whose
    chosen scores are not negligible next to the 1e-20 guard: sum > 1e-6)."""
    params = dict(case.params, norm_topk_prob=True)
    ref = check.reference_outputs(STEM, check.rounded(case, STEM, np.float64), params)
    rows = np.take_along_axis(ref[2], ref[0], axis=-1).sum(-1) > 1e-6
    c = Case(case.arrays, params)
    scale = params["routed_scaling_factor"]
    check.check_same(target, "normalized_sum", STEM, c, c,
                     view_a=lambda o: o[1].sum(-1)[rows],
                     view_b=lambda o: np.full(int(rows.sum()), scale))


@PROPERTY
@given(case=COMPONENT.cases())
def test_zero_bias_is_no_bias(target, case):
    e = case.arrays["logits"].shape[1]
    zero = Case(dict(case.arrays, bias=np.zeros(e)), case.params)
    none = Case(dict(case.arrays, bias=None), case.params)
    check.check_same(target, "zero_bias", STEM, zero, none,
                     view_a=lambda o: np.concatenate([o[0], o[1]], axis=-1),
                     view_b=lambda o: np.concatenate([o[0], o[1]], axis=-1))


def _weights_from_scores(o, params) -> np.ndarray:
    ids, _, s = o
    w = np.take_along_axis(s, np.asarray(ids, np.int64), axis=-1)
    if params["norm_topk_prob"]:
        w = w / (w.sum(-1, keepdims=True) + 1e-20)
    return params["routed_scaling_factor"] * w


@PROPERTY
@given(case=COMPONENT.cases(), data=st.data())
def test_bias_never_enters_the_weights(target, case, data):
    """Whatever the bias (it may change the selection), the weights are the unbiased scores of
    the selected experts, renormalized and scaled."""
    e = case.arrays["logits"].shape[1]
    bias = data.draw(S.float_arrays((e,), styles=("normal",), scales=(0.1, 1.0, 4.0)))
    c = Case(dict(case.arrays, bias=bias), case.params)
    check.check_same(target, "bias_not_in_weights", STEM, c, c, view_a=lambda o: o[1],
                     view_b=lambda o: _weights_from_scores(o, case.params))


@PROPERTY
@given(case=COMPONENT.cases())
def test_group_limited_routing_uses_at_most_topk_group_groups(target, case):
    """With n_group > 1 each token's experts lie in at most topk_group groups: always with
    the "-inf" fill; with "zero" on rows whose k-th selected u is positive beyond rounding
    (a masked expert's 0.0 outranks a negative corrected score)."""
    params = case.params
    if params["n_group"] == 1:
        return
    check.require_impl(target, STEM)
    arrays = check.rounded(case, STEM, target.np_dtype)
    outs = _run(target, case, arrays, "property")
    if outs is None:
        return
    ids = np.asarray(target.backend.to_numpy(outs[0]), np.int64)
    e = arrays["logits"].shape[1]
    groups = ids // (e // params["n_group"])
    ref_ids = reference_ids(arrays, params)
    u = _selection(arrays, params)
    kth = np.take_along_axis(u, ref_ids[:, -1:], axis=-1)[:, 0] if len(u) else np.zeros(0)
    tau = row_tolerance(arrays, params, target.np_dtype)
    applies = (np.full(len(u), params["masked_group_fill"] == "-inf") | (kth > 2 * tau))
    for r in np.flatnonzero(applies):
        used = len(set(groups[r].tolist()))
        if used > params["topk_group"]:
            check.fail(f"row {r}: experts {ids[r].tolist()} use {used} groups > topk_group="
                       f"{params['topk_group']}", target, STEM, "property-groups", "topk_ids",
                       case)
    _results.record_check(STEM, target, "property-groups", "topk_ids", None)
