"""The naive baseline of whole models: the reference in a lower dtype, as a worst of several
rounding draws (see DRAWS), float64's modelled from float32's. Shared by the model conformance
tests and the checkpoint tests that judge backends and transformers on the same footing."""

from __future__ import annotations

import numpy as np
from hypothesis import event

from lmspec import reference
from lmspec.conformance import _check as check
from lmspec.reference.model import router_selection
from lmspec.spec._tolerance import eps_of, judge

# float64's naive error is modelled as float32's scaled by the ratio of unit roundoffs, as
# for the components (conformance/_inputs.py), so a float64 backend is not held to zero.
F64_FROM_F32 = 2.0**-29


def modelled(exact, rough):
    if isinstance(exact, dict):
        return {n: modelled(exact[n], rough[n]) for n in exact}
    if isinstance(exact, (tuple, list)):
        return type(exact)(modelled(e, r) for e, r in zip(exact, rough))
    if isinstance(exact, np.ndarray) and exact.dtype.kind == "f":
        return exact + (np.asarray(rough, np.float64) - exact) * F64_FROM_F32
    return exact


def ref(fn: str, params, arrays, cfg, dtype=None, **kw):
    """Reference in float64, or naive in ``dtype`` (params cast, every op rounded)."""
    call = getattr(reference, fn)
    if dtype is None:
        return call(params, **arrays, config=cfg, **kw)
    if np.dtype(dtype) == np.float64:
        return modelled(call(params, **arrays, config=cfg, **kw),
                        ref(fn, params, arrays, cfg, np.float32, **kw))
    with reference.computing_in(dtype):
        return call({n: a.astype(dtype) for n, a in params.items()}, **arrays, config=cfg, **kw)


# One naive evaluation is one draw of rounding errors, and a whole model's gradients are
# sensitive to the draw: a cancellation (rms_norm's backward over a tiny vector, a softmax's
# p - onehot) can happen to come out nearly exact in the naive order and not in another equally
# valid one (measured: a lightning layer's wq gradient, float32, naive error 3.6e-9 in one draw
# and 4e-7 in the next, while torch and jax land at 1e-7 and 2e-7). So the naive error is the
# largest over DRAWS evaluations: the naive itself and the naive at parameters moved by one ulp
# of the dtype (random signs), judged against the float64 reference at the unmoved parameters.
# Moving the parameters by one ulp costs what rounding them would (measured 1e-10 there, well
# below the rounding of the intermediates), so the bound grows by at most that.
DRAWS = 4


def jittered(params, dtype, seed: int) -> dict[str, np.ndarray]:
    """``params`` (already in ``dtype``) each moved by one ulp of ``dtype``, random signs."""
    rng = np.random.default_rng(seed)
    eps = eps_of(dtype)
    return {n: (a * (1 + eps * rng.choice((-1.0, 1.0), np.shape(a)))).astype(dtype)
            .astype(np.float64) for n, a in params.items()}


def worst(exact, draws):
    """Per array, the draw farthest from ``exact`` (what the judge reads as the naive)."""
    if isinstance(exact, dict):
        return {n: worst(exact[n], [d[n] for d in draws]) for n in exact}
    if isinstance(exact, (tuple, list)):
        return type(exact)(worst(r, [d[i] for d in draws]) for i, r in enumerate(exact))
    if exact is None or np.asarray(exact).dtype.kind != "f":
        return draws[0]
    with np.errstate(invalid="ignore"):
        errs = [float(np.nanmax(np.abs(np.asarray(d, np.float64) - exact), initial=0.0))
                for d in draws]
    return draws[int(np.argmax(errs))]


def naive(fn: str, params, arrays, cfg, dtype, exact, **kw):
    """The worst of DRAWS naive evaluations (see DRAWS) against ``exact`` (the float64
    reference's result), per array; for float64 the float32 draws scaled as in ``modelled``."""
    rough = np.float32 if np.dtype(dtype) == np.float64 else dtype
    draws = [ref(fn, params if s == 0 else jittered(params, rough, s), arrays, cfg, rough, **kw)
             for s in range(DRAWS)]
    far = worst(exact, draws)
    return modelled(exact, far) if np.dtype(dtype) == np.float64 else far


def on_a_knife_edge(params, inputs, cfg, dtype) -> bool:
    """Routing is discrete: where the naive evaluation in the dtype picks other experts than
    float64, or a selection margin is within 4x the naive error of the selection scores, the
    choice sits on a knife edge."""
    if cfg.moe is None or np.dtype(dtype) == np.float64:
        return False
    exact = router_selection(params, **inputs, config=cfg)
    with reference.computing_in(dtype):
        rough = router_selection({n: a.astype(dtype) for n, a in params.items()}, **inputs,
                                 config=cfg)
    for (u, ids, margin), (u2, ids2, _) in zip(exact, rough):
        err = float(np.max(np.abs(np.asarray(u2, np.float64) - u), initial=0.0))
        if not np.array_equal(ids, ids2) or margin <= 4 * err:
            return True
    return False


def judge_unless_naive_fails(target, stem, test, name, got, ref, naive, case, kind="output",
                             magnitude=0.0) -> None:
    """The tolerance policy on one output, unless the naive evaluation in the dtype fails it
    itself: then no implementation that rounds as the dtype does can pass, the output carries
    nothing the dtype can compute (seen: a bfloat16 gradient of a tiny hybrid whose naive error,
    1e-2, exceeds the gradient itself, 6e-3), and it is not judged (a hypothesis event counts
    such outputs; the case's other outputs still are)."""
    ref = np.asarray(ref, np.float64)
    mag = max(float(np.max(np.abs(ref), initial=0.0)), magnitude)
    out_dtype = check.output_dtype(np.asarray(target.backend.to_numpy(got)), target) if (
        not np.isscalar(got)) else np.dtype(np.float32)
    kw = dict(out_dtype=out_dtype, kind=kind, backend=target.backend.name, component=stem,
              dtype=target.dtype, magnitude=mag)
    if not judge(np.asarray(naive, np.float64), ref, naive, **kw).ok:
        event(f"{stem} {kind}: naive in the dtype no better than a trivial answer, not judged")
        return
    got_np = np.asarray(target.backend.to_numpy(got), np.float64) if not np.isscalar(got) \
        else np.asarray(got, np.float64)
    check.settle(judge(got_np, ref, naive, **kw), target, stem, test, name, case)


def group(name: str) -> str:
    return ".".join(name.split(".")[:2]) if name.startswith("layers.") else "top"


def group_scales(grads) -> dict[str, float]:
    """The largest |gradient| among the parameters of each layer (and of the embedding, final
    norm and head together): the scale at which a gradient's rounding errors live when its own
    value cancels to ~0 (a router whose weights are normalised away, E = k: exactly 0 in exact
    arithmetic, 1e-8 in float32 from 1/S - s/S^2), so it enters only the floor (4 ulps)."""
    out: dict[str, float] = {}
    for name, g in grads.items():
        out[group(name)] = max(out.get(group(name), 0.0), float(np.max(np.abs(g), initial=0)))
    return out


def loss_aligned(params, arrays, cfg, dtype, n_tokens: int | None = None) -> float:
    """What rounding the logits can cost the loss at most, to first order: the logits' worst
    naive error per token propagated with aligned signs, sum_t ||dloss/dlogits_t||_1
    max_v |dlogits_t|, over the valid targets, / n_tokens (default: their count); with
    ``arrays["weights"]`` each token's term times |w_t|."""
    fwd = {n: arrays.get(n) for n in ("tokens", "positions", "segment_ids")}
    logits = ref("model", params, fwd, cfg)[0]
    rough = np.asarray(naive("model", params, fwd, cfg, dtype, (logits, None))[0], np.float64)
    v = logits.shape[-1]
    lg, tg = logits.reshape(-1, v), np.asarray(arrays["targets"]).reshape(-1)
    err = np.max(np.abs(rough.reshape(-1, v) - lg), axis=-1)
    keep = tg >= 0
    lse = np.log(np.sum(np.exp(lg - lg.max(-1, keepdims=True)), -1)) + lg.max(-1)
    d = np.exp(lg - lse[:, None])
    d[np.arange(len(tg))[keep], tg[keep]] -= 1
    w = np.abs(d).sum(-1) + 2 * cfg.z_loss * np.abs(lse)  # ||dloss/dlogits_t||_1 (x n)
    if arrays.get("weights") is not None:
        w = w * np.abs(np.asarray(arrays["weights"], np.float64).reshape(-1))
    n = int(keep.sum()) if n_tokens is None else int(n_tokens)
    return float(np.sum((w * err)[keep]) / max(n, 1))


def loss_naive(params, arrays, cfg, dtype, ref_loss, drawn, aligned: float | None = None):
    """The loss's naive: the worst draw, or, when larger, ``ref_loss`` + the aligned bound
    (``loss_aligned``, unless given). The loss is one number, one draw of its rounding
    errors averaged over tokens; a backend that rounds the logits no worse than the naive
    can still land a few draws' width away (measured: bfloat16, 1.3x twice the worst of four
    draws, with logits within bound). Bugs of the loss's own size (its normalisation, a
    target shift, the ignore index) stay far above the aligned bound."""
    if aligned is None:
        aligned = loss_aligned(params, arrays, cfg, dtype)
    drawn = np.asarray(drawn, np.float64)
    if aligned > float(np.abs(drawn - ref_loss)):
        return ref_loss + aligned
    return drawn
