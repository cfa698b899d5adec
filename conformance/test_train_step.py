"""Conformance of one training step: the loss, the gradient norm, both moments and the new
master weights against the float64 reference per model family and compute dtype; the learning
rate, token count and expert loads exactly; accumulation invariance (8x1 == 1x8 == 2x4 on the
backend itself); bad inputs.

The new weights are judged against the update recomputed in float64 from the backend's *own*
new moments: Adam's first steps move every weight by about lr sign(g), so a gradient element
near 0 whose sign rounding flips would move its weight by 2 lr; the moments carry the
gradient's error linearly and are judged against the reference, and the weights then check
the update rule itself (decay, bias correction, eps, the learning rate) to float32 rounding."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings

from lmspec.conformance import _check as check
from lmspec.conformance import _results
from lmspec.conformance._model_naive import (
    group,
    group_scales,
    judge_unless_naive_fails,
    loss_aligned,
    loss_naive,
    on_a_knife_edge,
)
from lmspec.conformance._model_naive import naive as model_naive
from lmspec.spec import Case
from lmspec.spec._tolerance import FLOOR_ULPS, K, floor_for
from lmspec.spec.train_step import (
    COMPONENT,
    TrainConfig,
    case_state,
    lr_at,
    micro_batch,
    micro_config,
    n_valid,
    train_cases,
)

RT = importlib.import_module("lmspec.reference.train_step")
STEM = COMPONENT.stem
# each example runs A micro-batches of a model (and compiles a step on jax_xla): a quarter of
# the profile's budget (ci: 5, thorough: 75)
BUDGET = settings(max_examples=max(2, settings().max_examples // 4))
_COMPUTE = {"float64": "float64", "float32": "float32", "bfloat16": "bfloat16"}


def _require(target) -> None:
    jax = sys.modules.get("jax")  # a compiled step per config: see test_model._require
    if jax is not None:
        jax.clear_caches()
    check.require_impl(target, STEM)
    if target.dtype not in _COMPUTE:
        _results.record_status(STEM, target, "train_step", check.NOT_IMPLEMENTED)
        pytest.skip(f"{check.NOT_IMPLEMENTED}: compute dtype {target.dtype} (fp16 needs loss "
                    "scaling, not specified yet)")


def _setup(target, case: Case):
    """(model config, train config with the target's compute dtype, master weights, moments,
    batch); master weights float32, float64 on a float64 target."""
    q = case.params
    cfg = q["config"]
    tc = TrainConfig.from_dict({**q["train"].to_dict(), "compute_dtype": _COMPUTE[target.dtype]})
    params, opt = case_state(case)
    if target.np_dtype == np.float64:
        params = {n: a.astype(np.float64) for n, a in params.items()}
        opt = {k: {n: a.astype(np.float64) for n, a in d.items()} for k, d in opt.items()}
    batch = {"tokens": case.arrays["tokens"], "targets": case.arrays["targets"]}
    if case.arrays.get("weights") is not None:
        batch["weights"] = case.arrays["weights"]
    pc = RT.cast(params, tc.compute_dtype)
    for a in range(batch["tokens"].shape[0]):
        mb = micro_batch(batch, a)
        inputs = {"tokens": mb["tokens"], "positions": None, "segment_ids": None}
        if on_a_knife_edge(pc, inputs, cfg, target.np_dtype):
            _results.record_out_of_range(STEM, target, "knife_edge")
            assume(False)
    return cfg, tc, params, opt, batch


def _run(target, params, opt, batch, step, cfg, tc):
    b = target.backend
    master = "float64" if target.np_dtype == np.float64 else "float32"
    p = {n: b.asarray(a, master) for n, a in params.items()}
    o = {k: {n: b.asarray(a, master) for n, a in d.items()} for k, d in opt.items()}
    return check.run_case(target, STEM, "step", lambda: b.fn("train_step")(
        p, o, batch, step, model_config=cfg, train_config=tc))


def _naive_step(params, opt, batch, step, cfg, tc, target):
    """The naive step: each micro-batch's gradients as the naive model in the compute dtype
    (the worst of its rounding draws), accumulated and applied in float32. Its metrics'
    loss and grad_norm are widened to first-order bounds (see ``_widened``)."""
    dt = target.np_dtype
    exact_runs = []  # the float64 (loss, metrics, grads) of each micro-batch

    def grad(pc, tokens, targets, positions, segment_ids, *, config, n_tokens, weights=None):
        arrays = {"tokens": tokens, "targets": targets, "positions": positions,
                  "segment_ids": segment_ids}
        kw = {"n_tokens": n_tokens, "weights": weights}
        exact = RT.model_grad(pc, **arrays, config=config, **kw)
        exact_runs.append(exact)
        return model_naive("model_grad", pc, arrays, config, dt, exact, **kw)

    pc = RT.cast(params, tc.compute_dtype)
    loss, metrics, grads = RT.accumulate(pc, batch, model_config=cfg, grad=grad)
    f32 = np.float64 if dt == np.float64 else np.float32
    new_p, new_o, norm, _, _ = RT.adamw_update(params, opt, grads, step, train_config=tc,
                                               dtype=f32)
    exact = {n: sum(np.asarray(r[2][n], np.float64) for r in exact_runs) for n in grads}
    ref_loss = sum(float(r[0]) for r in exact_runs)
    return new_p, new_o, {**metrics, "loss": loss, "grad_norm": norm,
                          **_widened(pc, batch, cfg, dt, loss, ref_loss, grads, exact)}


def _widened(pc, batch, cfg, dt, loss, ref_loss, grads, exact) -> dict[str, float]:
    """The naive loss and grad norm as bounds, not one draw: a scalar is one draw of many
    rounding errors, and a backend that rounds no worse can land farther from the reference
    than the draw did (seen at the thorough profile: a bfloat16 grad norm 1.27x the naive's
    distance). The loss: the aligned first-order bound of the logits' naive errors
    (``loss_naive``), summed over micro-batches. The norm: by the triangle inequality,
    |norm(g_naive) - norm(g)| <= norm(g_naive - g), so the naive norm is the reference norm
    + norm(g_naive - g) when that is farther. Both keep the draw where it is farther."""
    n = n_valid(batch)
    mcfg = micro_config(cfg, batch["tokens"].shape[0])
    aligned = sum(loss_aligned(pc, micro_batch(batch, a), mcfg, dt, n_tokens=n)
                  for a in range(batch["tokens"].shape[0]))
    ref_norm = float(np.sqrt(sum(np.sum(g * g) for g in exact.values())))
    gap = float(np.sqrt(sum(np.sum((np.asarray(grads[k], np.float64) - g) ** 2)
                            for k, g in exact.items())))
    norm = float(np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in grads.values())))
    return {"loss": float(loss_naive(None, None, cfg, dt, ref_loss, loss, aligned=aligned)),
            "grad_norm": ref_norm + gap if gap > abs(norm - ref_norm) else norm}


def expected_params(params, m, v, step, tc: TrainConfig, dtype) -> dict[str, np.ndarray]:
    """The spec's weight update from the given new moments, in ``dtype``."""
    dt = np.dtype(dtype)
    lr, t = lr_at(step, tc.lr, tc.schedule), step + 1
    out = {}
    for n in m:
        p = np.asarray(params[n], np.float64).astype(dt)
        if tc.weight_decay and tc.decays(n):
            p = p * dt.type(1 - lr * tc.weight_decay)
        mm, vv = (np.asarray(x, np.float64).astype(dt) for x in (m[n], v[n]))
        out[n] = p - dt.type(lr) * (mm / dt.type(1 - tc.beta1 ** t)) / (
            np.sqrt(vv / dt.type(1 - tc.beta2 ** t) + dt.type(tc.eps_root)) + dt.type(tc.eps))
    return out


def _np(target, x) -> np.ndarray:
    return np.asarray(target.backend.to_numpy(x), np.float64)


@BUDGET
@given(case=train_cases())
def test_step(target, case):
    """One step: loss, grad norm, m, v by the tolerance policy against the reference; the
    new weights against the update from the backend's own moments; lr, n_tokens, loads and
    the router biases exactly."""
    _require(target)
    cfg, tc, params, opt, batch = _setup(target, case)
    step = case.params["step"]
    got = _run(target, params, opt, batch, step, cfg, tc)
    if got is None:
        return
    gp, go, gm = got
    rp, ro, rm = RT.train_step(params, opt, batch, step, model_config=cfg, train_config=tc)
    np_, no, nm = _naive_step(params, opt, batch, step, cfg, tc, target)

    def judge(test, name, g, r, n, kind="output", magnitude=0.0):
        judge_unless_naive_fails(target, STEM, test, name, g, r, n, case, kind, magnitude)

    judge("step", "loss", gm["loss"], rm["loss"], nm["loss"])
    judge("step", "grad_norm", gm["grad_norm"], rm["grad_norm"], nm["grad_norm"])
    for k in ("m", "v"):
        scales = group_scales(ro[k])  # as the model's gradients: see group_scales
        for n in ro[k]:
            judge("step", f"{k}.{n}", go[k][n], ro[k][n], no[k][n], kind="gradient",
                  magnitude=scales[group(n)])
    for what, want, exact in (("lr", rm["lr"], False), ("n_tokens", rm["n_tokens"], True)):
        have = gm[what]
        if (have != want) if exact else not np.isclose(have, want, rtol=1e-12, atol=0):
            check.fail(f"metrics[{what!r}] {have!r} != {want!r}", target, STEM, "step", what,
                       case)
    if not np.array_equal(_np(target, gm["loads"]), np.asarray(rm["loads"], np.float64)):
        check.fail("metrics['loads'] differ from the reference's", target, STEM, "step",
                   "loads", case)
    gm_ = {n: _np(target, go["m"][n]) for n in ro["m"]}
    gv_ = {n: _np(target, go["v"][n]) for n in ro["v"]}
    want64 = expected_params(params, gm_, gv_, step, tc, np.float64)
    master = np.float64 if target.np_dtype == np.float64 else np.float32
    want_naive = expected_params(params, gm_, gv_, step, tc, master)
    for n, w in want64.items():
        judge("update", n, gp[n], w, want_naive[n])
    for n in set(rp) - set(ro["m"]):  # buffers: the router biases, exactly
        if not np.array_equal(_np(target, gp[n]), np.asarray(rp[n], np.float64).astype(
                master).astype(np.float64)):
            check.fail(f"buffer {n!r} differs from the reference's bias update", target, STEM,
                       "update", n, case)


@BUDGET
@given(case=train_cases())
def test_accumulation_invariance(target, case):
    """The same 8 rows as 1 micro-batch of 8, 2 of 4 and 8 of 1 give the same step, up to the
    naive errors of both sides (balance terms, which are means of per-micro-batch terms, are
    not additive: checked on models without them)."""
    _require(target)
    cfg, tc, params, opt, _ = _setup(target, case)
    m = cfg.moe
    assume(m is None or not (m.balance_coef or m.router_z_coef or m.capacity_factor))
    rng = np.random.default_rng(case.params["seed"])
    tok = rng.integers(0, cfg.vocab_size, (8, 4))
    tg = np.concatenate([tok[:, 1:], np.full((8, 1), -100)], 1)
    tg[:6, :2] = -100  # micro-batches of different token counts
    step = case.params["step"]
    sides = {}
    for a in (1, 2, 8):
        batch = {"tokens": tok.reshape(a, 8 // a, 4), "targets": tg.reshape(a, 8 // a, 4)}
        assert micro_config(cfg, a) == cfg
        got = _run(target, params, opt, batch, step, cfg, tc)
        if got is None:
            return
        sides[a] = (got, _naive_step(params, opt, batch, step, cfg, tc, target),
                    RT.train_step(params, opt, batch, step, model_config=cfg, train_config=tc))
    (g1, n1, r1) = sides[1]
    for a in (2, 8):
        ga, na, ra = sides[a]
        for k in ("m", "v"):
            scales = group_scales(r1[1][k])
            for n in r1[1][k]:
                _same(target, case, f"accumulation_{a}", f"{k}.{n}",
                      (ga[1][k][n], na[1][k][n], ra[1][k][n]),
                      (g1[1][k][n], n1[1][k][n], r1[1][k][n]), scales[group(n)])


def _same(target, case, test, name, a, b, magnitude: float) -> None:
    """a and b are (backend, naive, reference) of one output under two splittings: equal
    on the float64 reference, and on the backend within K x (both naive errors) + floors
    (``split_gap``)."""
    (ga, na, ra), (gb, nb, rb) = ([np.asarray(x, np.float64) if i else _np(target, x)
                                   for i, x in enumerate(s)] for s in (a, b))
    master = np.float64 if target.np_dtype == np.float64 else np.float32
    problem = split_gap((ga, na, ra), (gb, nb, rb), master, magnitude)
    if problem and problem.startswith("REFERENCE"):
        pytest.fail(f"{test}: {name} differs on the float64 {problem}: the spec or the "
                    f"reference is wrong. case: {case.describe()}")
    _results.record_check(STEM, target, test, name, None)
    if problem:
        check.fail(f"{test}: {name} differs between the splittings by {problem}", target,
                   STEM, test, name, case)


def split_gap(a, b, master, magnitude: float = 0.0) -> str | None:
    """None when one output computed two ways that are the same math (8x1 and 1x8
    micro-batches; one device and a mesh) agrees, else what differs. ``a`` and ``b`` are
    (backend, naive, reference) float64 arrays of each way: the references must agree to
    1e-9 of the scale (else "REFERENCE ..."), and the backend's two sides within
    K x (both naive errors) + 2 floors of the master dtype. The sides are compared with each
    other, not each with the reference: a backend rounds both the same way, and each side's
    distance to the reference is test_step's business."""
    (ga, na, ra), (gb, nb, rb) = ([np.asarray(x, np.float64) for x in s] for s in (a, b))
    scale = max(float(np.max(np.abs(ra), initial=0.0)), magnitude)
    gap = float(np.max(np.abs(ra - rb), initial=0.0))
    if gap > 1e-9 * max(scale, 1e-30):
        return f"REFERENCE (gap {gap:.3g})"
    naive_err = float(np.max(np.abs(na - ra), initial=0.0) + np.max(np.abs(nb - rb),
                                                                       initial=0.0))
    bound = K["gradient"] * naive_err + 2 * floor_for(np.dtype(master), FLOOR_ULPS, scale)
    err = float(np.max(np.abs(ga - gb), initial=0.0))
    if err <= bound:
        return None
    return (f"{err:.3g} > bound {bound:.3g} (= {K['gradient']:g} x naive errors "
            f"{naive_err:.3g} + floor)")


def test_errors(target):
    check.require_impl(target, STEM)
    fn = target.backend.fn("train_step")
    for err in COMPONENT.errors:
        _, kw = err.build()
        b = target.backend
        kw = dict(kw)
        kw["params"] = {n: b.asarray(a, "float32") for n, a in kw["params"].items()}
        with pytest.raises(err.exception, match=err.match):
            fn(**kw)
    _results.record_check(STEM, target, "errors", "all", None)


for _fn in (test_step, test_accumulation_invariance):
    _fn.__qualname__ = f"{STEM}.{_fn.__name__}"
