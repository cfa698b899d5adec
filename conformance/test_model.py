"""Conformance of whole models: logits, loss and every parameter's gradient against the
reference per family and dtype, error inputs, and the model-level properties (causal prefix,
packed == alone, batch invariance, prefill + decode == full, MoE with one expert == dense,
MLA absorbed == naive, all-softmax hybrid == dense)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lmspec import reference
from lmspec.conformance import _check as check
from lmspec.conformance import _results
from lmspec.conformance._model_naive import F64_FROM_F32 as _F64_FROM_F32
from lmspec.conformance._model_naive import group as _group
from lmspec.conformance._model_naive import group_scales as _group_scales
from lmspec.conformance._model_naive import (
    judge_unless_naive_fails,
    loss_naive,
    on_a_knife_edge,
)
from lmspec.conformance._model_naive import naive as _naive
from lmspec.conformance._model_naive import ref as _ref
from lmspec.spec import Case, _coverage
from lmspec.spec._tolerance import FLOOR_ULPS, K, floor_for
from lmspec.spec.model import COMPONENT, FAMILIES, MoEConfig, init_params, model_cases
from lmspec.spec.train_step import WEIGHT_VALUES

STEM = COMPONENT.stem
OPT = ("positions", "segment_ids")
# Each example builds a model (and compiles one on jax_xla: 1-5 s a config, and a decode
# recompiles per cache length), so the model tests run a share of the profile's budget: half
# for the standard tests, a quarter for the properties (ci: 10 and 5, thorough: 150 and 75).
STANDARD = settings(max_examples=max(3, settings().max_examples // 2))
PROPERTY = settings(max_examples=max(2, settings().max_examples // 4))
# The structural properties (a prefix, a batch, packing, a cache, one expert, MLA's two forms,
# an all-softmax hybrid) catch a wrong mask, offset, routing or cache, whatever the 16-bit
# format: below the thorough profile they run in float32 and bfloat16, not float16 too
# (conformance/conftest.py; a third of their time, the most of it jax_xla's compiles).
STRUCTURAL = ("causal_prefix", "batch_invariance", "packed_equals_alone",
              "prefill_then_decode_equals_full", "moe_with_one_expert_equals_dense",
              "mla_absorbed_equals_naive", "all_softmax_hybrid_equals_dense")


# ----------------------------------------------------------------------------- running


def _params64(case: Case, dtype) -> dict[str, np.ndarray]:
    """The case's parameters, rounded to the dtype under test (what every side sees); and
    the case's coverage events (here, not in the tests: a test's source seeds its examples)."""
    _coverage.emit(COMPONENT, case)
    p = init_params(case.params["config"], case.params["seed"], std=case.params["std"],
                    norm_std=case.params["norm_std"])
    return {n: a.astype(dtype).astype(np.float64) for n, a in p.items()}


def _inputs(case: Case) -> dict:
    return {n: case.arrays.get(n) for n in ("tokens", *OPT)}


def _native(target, params, arrays):
    b = target.backend
    return ({n: b.asarray(a, target.dtype) for n, a in params.items()},
            {n: b.asarray(a, None) for n, a in arrays.items()})


def _backend(target, fn: str, params, arrays, cfg, **kw):
    p, a = _native(target, params, arrays)
    return check.run_case(target, STEM, fn, lambda: target.backend.fn(fn)(p, **a, config=cfg,
                                                                            **kw))


def _np(target, x) -> np.ndarray:
    return np.asarray(target.backend.to_numpy(x), np.float64)


def _require(target, fn: str) -> None:
    """Skip unless the backend has ``fn``; called first in every example, so it also drops
    JAX's compiled executables: each model config compiles its own (its forward, loss,
    gradient, a decode per cache length) and no later example shares them, while every one
    held keeps memory mappings alive (see _jax_hygiene: a module's worth of model examples,
    shrinking included, reached the mapping limit and segfaulted inside XLA's compiler)."""
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.clear_caches()
    check.require_impl(target, STEM)
    if not callable(getattr(target.backend.impl, fn, None)):
        _results.record_status(STEM, target, fn, check.NOT_IMPLEMENTED)
        pytest.skip(f"{check.NOT_IMPLEMENTED}: {target.backend.name} has no {fn}")


def _not_a_knife_edge(target, case: Case, params) -> None:
    """A case whose routing sits on a knife edge (see _model_naive.on_a_knife_edge) is not
    judged (hypothesis draws another)."""
    if on_a_knife_edge(params, _inputs(case), case.params["config"], target.np_dtype):
        _results.record_out_of_range(STEM, target, "knife_edge")
        assume(False)


def _judge(target, test, name, got, ref, naive, case, kind="output", magnitude=0.0):
    judge_unless_naive_fails(target, STEM, test, name, got, ref, naive, case, kind, magnitude)


# ----------------------------------------------------------------------------- standard tests


@STANDARD
@given(case=model_cases())
def test_forward(target, case):
    _require(target, "model")
    cfg, dt = case.params["config"], target.np_dtype
    params = _params64(case, dt)
    _not_a_knife_edge(target, case, params)
    got = _backend(target, "model", params, _inputs(case), cfg)
    if got is None:
        return
    ref = _ref("model", params, _inputs(case), cfg)[0]
    naive = _naive("model", params, _inputs(case), cfg, dt, (ref, None))[0]
    check._require_in_range(STEM, [ref], [naive], target)
    _judge(target, "forward", "logits", got[0], ref, naive, case)


@STANDARD
@given(case=model_cases())
def test_loss_and_gradients(target, case):
    """The loss (cross-entropy, z-loss and MoE terms) and every trainable parameter's
    gradient, each judged by the tolerance policy."""
    _loss_and_gradients(target, case, "")


@PROPERTY
@given(case=model_cases(), data=st.data())
def test_weighted_loss_and_gradients(target, case, data):
    """The same with per-target weights (alignment losses as a weighted cross-entropy):
    weights of both signs and zero, exact in every dtype, drawn per target."""
    tg = case.arrays["targets"]
    idx = data.draw(st.lists(st.integers(0, len(WEIGHT_VALUES) - 1), min_size=tg.size,
                             max_size=tg.size), label="weight indices")
    weights = WEIGHT_VALUES[np.asarray(idx, np.int64)].reshape(tg.shape)
    _loss_and_gradients(target, case, "weighted_", weights)


def _loss_and_gradients(target, case, prefix: str, weights=None) -> None:
    """Judged as the tests ``{prefix}loss`` and ``{prefix}gradient``."""
    _require(target, "model_grad")
    cfg, dt = case.params["config"], target.np_dtype
    params = _params64(case, dt)
    _not_a_knife_edge(target, case, params)
    arrays = dict(_inputs(case), targets=case.arrays["targets"])
    kw = {} if weights is None else {"weights": weights}
    got = _backend(target, "model_grad", params, arrays, cfg, **kw)
    if got is None:
        return
    ref_loss, ref_m, ref_g = _ref("model_grad", params, arrays, cfg, **kw)
    nv_loss, _, nv_g = _naive("model_grad", params, arrays, cfg, dt,
                              (np.asarray(ref_loss), ref_m, ref_g), **kw)
    check._require_in_range(STEM, [ref_loss, *ref_g.values()], [nv_loss, *nv_g.values()],
                            target)
    loss, metrics, grads = got
    nv_loss = loss_naive(params, dict(arrays, **kw), cfg, dt, np.asarray(ref_loss), nv_loss)
    _judge(target, prefix + "loss", "loss", loss, np.asarray(ref_loss), np.asarray(nv_loss),
           case)
    if int(metrics["n_tokens"]) != ref_m["n_tokens"]:
        check.fail(f"metrics['n_tokens'] {metrics['n_tokens']} != {ref_m['n_tokens']}",
                   target, STEM, prefix + "loss", "n_tokens", case)
    missing = sorted(set(ref_g) - set(grads))
    if missing:
        check.fail(f"no gradient returned for {missing[:4]}", target, STEM,
                   prefix + "gradient", missing[0], case)
    scales = _group_scales(ref_g)
    for name in ref_g:
        _judge(target, prefix + "gradient", name, grads[name], ref_g[name], nv_g[name], case,
               kind="gradient", magnitude=scales[_group(name)])


def test_errors(target):
    _require(target, "model")
    b = target.backend

    def call(params):
        arrays = {n: params.pop(n) for n in ("params", "tokens", "positions", "segment_ids",
                                             "caches")}
        p = {n: b.asarray(a, target.dtype) for n, a in arrays.pop("params").items()}
        caches = arrays.pop("caches")
        if caches is not None:
            caches = [{n: b.asarray(a, target.dtype) for n, a in c.items()} for c in caches]
        tok = arrays.pop("tokens")
        tok = b.asarray(tok, None if tok.dtype.kind in "iu" else target.dtype)
        rest = {n: b.asarray(a, None) for n, a in arrays.items()}
        return b.fn("model")(p, tok, **rest, caches=caches, **params)

    check.check_errors(target, STEM, call=call)


# ----------------------------------------------------------------------------- properties


def _side(target, cfg, params, arrays, view):
    """(ref, naive, got) of view(logits) on one side of a property."""
    dt = target.np_dtype
    exact = _ref("model", params, arrays, cfg)[0]
    ref = view(exact)
    naive = view(np.asarray(_naive("model", params, arrays, cfg, dt, (exact, None))[0],
                            np.float64))  # the worst of the rounding draws, as test_forward
    got = _backend(target, "model", params, arrays, cfg)
    return ref, naive, (None if got is None else view(_np(target, got[0])))


def _same(target, name, case, a, b):
    """a and b are (config, params, arrays, view): the property view_a == view_b must hold
    exactly on the reference and, on the backend, within k * (both naive errors) + floors."""
    (ra, na, ga), (rb, nb, gb) = (_side(target, *s) for s in (a, b))
    if ga is None or gb is None:
        return
    scale = float(np.max(np.abs(ra), initial=0.0))
    gap = float(np.max(np.abs(ra - rb), initial=0.0))
    if gap > 1e-9 * max(scale, 1.0):
        pytest.fail(f"property {name!r} fails on the float64 REFERENCE (gap {gap:.3g}): the spec"
                    f" or the reference is wrong. case: {case.describe()}")
    naive_err = float(np.max(np.abs(na - ra), initial=0.0) + np.max(np.abs(nb - rb),
                                                                       initial=0.0))
    bound = K["output"] * naive_err + 2 * floor_for(target.np_dtype, FLOOR_ULPS, scale)
    err = float(np.max(np.abs(ga - gb), initial=0.0))
    _results.record_check(STEM, target, f"property-{name}", "logits", None)
    if not err <= bound:
        check.fail(f"property {name!r} violated: sides differ by {err:.3g} > bound {bound:.3g}"
                   f" (= {K['output']:g} x naive errors {naive_err:.3g} + floor)", target, STEM,
                   f"property-{name}", "logits", case)


def _prepared(target, case):
    _require(target, "model")
    params = _params64(case, target.np_dtype)
    _not_a_knife_edge(target, case, params)
    return case.params["config"], params, _inputs(case)


@PROPERTY
@given(case=model_cases(), data=st.data())
def test_causal_prefix(target, case, data):
    """Logits of the first m tokens do not depend on the tokens after them."""
    cfg, params, arrays = _prepared(target, case)
    t = arrays["tokens"].shape[1]
    # capacity counts every token of the call: dropping makes early tokens see later ones
    assume(t >= 2 and (cfg.moe is None or cfg.moe.capacity_factor is None))
    m = data.draw(st.integers(1, t - 1))
    cut = {n: None if a is None else a[:, :m] for n, a in arrays.items()}
    _same(target, "causal_prefix", case, (cfg, params, arrays, lambda x: x[:, :m]),
          (cfg, params, cut, lambda x: x))


@PROPERTY
@given(case=model_cases(), data=st.data())
def test_batch_invariance(target, case, data):
    """Row i of a batch equals row i run alone, whatever the other rows hold."""
    cfg, params, arrays = _prepared(target, case)
    b = arrays["tokens"].shape[0]
    assume(b >= 2 and (cfg.moe is None or cfg.moe.capacity_factor is None))
    i = data.draw(st.integers(0, b - 1))
    alone = {n: None if a is None else a[i:i + 1] for n, a in arrays.items()}
    _same(target, "batch_invariance", case, (cfg, params, arrays, lambda x: x[i:i + 1]),
          (cfg, params, alone, lambda x: x))


@PROPERTY
@given(case=model_cases())
def test_packed_equals_alone(target, case):
    """Packed documents (segment ids, positions restarting) equal each document run alone."""
    cfg, params, arrays = _prepared(target, case)
    seg = arrays["segment_ids"]
    assume(seg is not None and (cfg.moe is None or cfg.moe.capacity_factor is None))
    # a row holding one document only checks the mask against itself: draw again
    assume(any(len(np.unique(row)) > 1 for row in seg))
    for r, row in enumerate(seg):
        for s in np.unique(row):
            cols = np.flatnonzero(row == s)
            one = {"tokens": arrays["tokens"][r:r + 1, cols], "positions": None,
                   "segment_ids": None}
            _same(target, "packed_equals_alone", case,
                  (cfg, params, arrays, lambda x, r=r, c=cols: x[r:r + 1, c]),
                  (cfg, params, one, lambda x: x))


@PROPERTY
@given(case=model_cases(), data=st.data())
def test_prefill_then_decode_equals_full(target, case, data):
    """A prefill of the first m tokens, then decoding the rest one at a time with the
    returned caches, gives the logits of one full forward."""
    cfg, params, arrays = _prepared(target, case)
    t = arrays["tokens"].shape[1]
    assume(t >= 2 and arrays["segment_ids"] is None and arrays["positions"] is None)
    assume(cfg.moe is None or cfg.moe.capacity_factor is None)
    m = data.draw(st.integers(1, t - 1))
    full = _side(target, cfg, params, arrays, lambda x: x)
    tok = arrays["tokens"]
    steps = [tok[:, :m]] + [tok[:, j:j + 1] for j in range(m, t)]

    def run(call):
        caches, outs = None, []
        for piece in steps:
            logits, caches = call(piece, caches)
            outs.append(logits)
        return np.concatenate(outs, axis=1)

    dt = target.np_dtype
    ref = run(lambda x, c: reference.model(params, x, caches=c, config=cfg, use_cache=True))
    rough_dt = np.float32 if dt == np.float64 else dt
    with reference.computing_in(rough_dt):
        pc = {n: a.astype(rough_dt) for n, a in params.items()}
        naive = np.asarray(run(lambda x, c: reference.model(pc, x, caches=c, config=cfg,
                                                            use_cache=True)), np.float64)
    if dt == np.float64:
        naive = ref + (naive - ref) * _F64_FROM_F32
    p, _ = _native(target, params, {})
    fn = target.backend.fn("model")

    def backend_step(x, c):
        logits, caches = fn(p, target.backend.asarray(x, None), caches=c, config=cfg,
                            use_cache=True)
        return _np(target, logits), caches

    got = check.run_case(target, STEM, "decode", lambda: run(backend_step))
    if got is None or full[2] is None:
        return
    scale = float(np.max(np.abs(full[0]), initial=0.0))
    gap = float(np.max(np.abs(ref - full[0]), initial=0.0))
    assert gap <= 1e-9 * max(scale, 1.0), f"decode != full on the REFERENCE: {case.describe()}"
    naive_err = float(np.max(np.abs(naive - ref)) + np.max(np.abs(full[1] - full[0])))
    bound = K["output"] * naive_err + 2 * floor_for(dt, FLOOR_ULPS, scale)
    err = float(np.max(np.abs(got - full[2])))
    _results.record_check(STEM, target, "property-decode_equals_full", "logits", None)
    if not err <= bound:
        check.fail(f"property 'decode_equals_full' violated: {err:.3g} > bound {bound:.3g}",
                   target, STEM, "property-decode_equals_full", "logits", case)


@PROPERTY
@given(case=model_cases("dense"))
def test_moe_with_one_expert_equals_dense(target, case):
    """A MoE model whose router sends every token to one expert (E = 1, weight 1) is the
    dense model with that expert as its FFN."""
    cfg, params, arrays = _prepared(target, case)
    moe_cfg = cfg.replace(moe=MoEConfig(n_experts=1, top_k=1, d_expert=cfg.d_ff))
    moe_params = dict(params)
    blocks = [f"layers.{i}." for i in range(cfg.n_layers)]
    for pre in blocks + [f"mtp.{j}." for j in range(cfg.mtp_depth)]:  # MTP: names only
        moe_params[pre + "moe.router"] = np.ones((cfg.d_model, 1))
        for n in ("w_gate", "w_up", "w_down"):
            moe_params[pre + "moe." + n] = moe_params.pop(pre + "ffn." + n)[None]
    _same(target, "moe_one_expert_is_dense", case, (moe_cfg, moe_params, arrays, lambda x: x),
          (cfg, params, arrays, lambda x: x))


@PROPERTY
@given(case=model_cases("deepseek"))
def test_mla_absorbed_equals_naive(target, case):
    cfg, params, arrays = _prepared(target, case)
    forms = [cfg.replace(mla=cfg.mla.__class__(**{**cfg.mla.__dict__, "form": f}))
             for f in ("naive", "absorbed")]
    _same(target, "mla_absorbed_is_naive", case, (forms[0], params, arrays, lambda x: x),
          (forms[1], params, arrays, lambda x: x))


@PROPERTY
@given(case=model_cases("dense"))
def test_all_softmax_hybrid_equals_dense(target, case):
    from lmspec.spec.model import HybridConfig

    cfg, params, arrays = _prepared(target, case)
    hybrid = cfg.replace(hybrid=HybridConfig(linear_per_softmax=0))
    _same(target, "all_softmax_hybrid_is_dense", case, (hybrid, params, arrays, lambda x: x),
          (cfg, params, arrays, lambda x: x))


for _fn in (test_forward, test_loss_and_gradients, test_causal_prefix, test_batch_invariance,
            test_packed_equals_alone, test_prefill_then_decode_equals_full,
            test_moe_with_one_expert_equals_dense, test_mla_absorbed_equals_naive,
            test_all_softmax_hybrid_equals_dense):
    _fn.__qualname__ = f"{STEM}.{_fn.__name__}"
assert set(FAMILIES) == {"dense", "moe", "deepseek", "hybrid"}
