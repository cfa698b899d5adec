"""Planted bugs in speculative decoding's rejection sampler: the float32 reference sampler with
one mistake (a patched helper of the reference module, or a wrong input or output around it).
Registered into mutants.MUTANTS by ``register``; each must fail the tests it names."""

from __future__ import annotations

import contextlib
import functools
import importlib
from types import SimpleNamespace

import numpy as np

from lmspec.backends import _reference_backend as ref_backend
from lmspec.reference._numerics import f
from lmspec.spec import rejection_sample as RS

RJ = importlib.import_module("lmspec.reference.rejection_sample")  # the module
TOP_P = 0.8  # the draft's nucleus in the top-p plant


@contextlib.contextmanager
def _patched(**attrs):
    old = {n: getattr(RJ, n) for n in attrs}
    try:
        for n, v in attrs.items():
            setattr(RJ, n, v)
        yield
    finally:
        for n, v in old.items():
            setattr(RJ, n, v)


def _lengths(x, lengths) -> np.ndarray:
    return np.full(x.shape[0], x.shape[1]) if lengths is None else np.asarray(lengths)


# ----------------------------------------------------------------------------- patched helpers


def _residual_not_clipped(p_row, q_row=None):
    """p - q without max(., 0): negative weights enter the inverse CDF."""
    if q_row is None:
        return f(p_row)
    w = f(f(p_row) - f(q_row))
    return w if np.any(w > 0) else f(p_row)


def _ratio_swapped(u, q_x, p_x):
    """min(1, q/p): the draft's and the target's probabilities swapped in the ratio."""
    return bool(f(f(u) * f(p_x)) < f(q_x))


def _not_renormalized(w, r):
    """r compared with the raw cumulative residual (r < C_j, not r S < C_j); none: the last."""
    below = f(r) < RJ.cdf(w)
    return int(np.argmax(below)) if below.any() else len(w) - 1


def _accept_at_equality(u, q_x, p_x):
    """u q(x) <= p(x) (Leviathan's r <= p/q, vLLM's p/q >= u): p(x) = 0 accepted at u = 0."""
    return bool(f(f(u) * f(q_x)) <= f(p_x))


def _cdf_ties_left(w, r):
    """min { j : r S <= C_j } (searchsorted side='left'): at r = 0 a leading zero-mass token."""
    C = RJ.cdf(w)
    below = f(f(r) * C[-1]) <= C
    return int(np.argmax(below)) if below.any() else len(w) - 1


# ----------------------------------------------------------------------------- wrong inputs/outputs


def _top_p(q: np.ndarray, top_p: float) -> np.ndarray:
    """Each row kept on its smallest most-probable set of mass >= top_p, renormalized."""
    order = np.argsort(-q, axis=-1, kind="stable")
    sorted_q = np.take_along_axis(q, order, -1)
    before = np.cumsum(sorted_q, -1) - sorted_q  # mass strictly above each entry
    keep = np.zeros(q.shape, bool)
    np.put_along_axis(keep, order, before < top_p * q.sum(-1, keepdims=True), -1)
    kept = np.where(keep, q, 0.0)
    return kept / np.maximum(kept.sum(-1, keepdims=True), 1e-30)


def _draft_after_top_p(draft_tokens, draft_probs, target_probs, uniforms, resample_uniforms,
                       lengths=None, *, pad_id=-1):
    """The ratio and residual use q truncated to its top-p set (renormalized), while the drafts
    were drawn from the full q: the processed distribution taken on one side only."""
    args = (draft_tokens, draft_probs, target_probs, uniforms, resample_uniforms, lengths)
    RS.check_args(*args, pad_id=pad_id)
    RS.check_values(*args)
    q = _top_p(np.asarray(draft_probs, np.float32), TOP_P).astype(np.float32)
    return RJ.rejection_sample(draft_tokens, q, target_probs, uniforms, resample_uniforms,
                               lengths, pad_id=pad_id)


def _bonus_after_rejection(draft_tokens, draft_probs, target_probs, uniforms, resample_uniforms,
                           lengths=None, *, pad_id=-1):
    """A bonus token from the next target row appended after the resampled one too."""
    n, toks = RJ.rejection_sample(draft_tokens, draft_probs, target_probs, uniforms,
                                  resample_uniforms, lengths, pad_id=pad_id)
    for i in np.flatnonzero(n < _lengths(draft_tokens, lengths)):
        k = int(n[i]) + 1
        toks[i, k] = RJ.inverse_cdf(RJ.final_weights(np.asarray(target_probs)[i, k]),
                                    resample_uniforms[i])
    return n, toks


def _target_rows_shifted(draft_tokens, draft_probs, target_probs, uniforms, resample_uniforms,
                         lengths=None, *, pad_id=-1):
    """Draft i checked against target row i + 1 (the logits of the position after it)."""
    p = np.asarray(target_probs)
    shifted = np.concatenate([p[:, 1:], p[:, -1:]], axis=1)
    return RJ.rejection_sample(draft_tokens, draft_probs, shifted, uniforms, resample_uniforms,
                               lengths, pad_id=pad_id)


def _bonus_from_the_last_row(draft_tokens, draft_probs, target_probs, uniforms, resample_uniforms,
                             lengths=None, *, pad_id=-1):
    """The bonus drawn from target row G, not row lengths[b], for a padded request."""
    n, toks = RJ.rejection_sample(draft_tokens, draft_probs, target_probs, uniforms,
                                  resample_uniforms, lengths, pad_id=pad_id)
    L, g = _lengths(draft_tokens, lengths), np.shape(draft_tokens)[1]
    for i in np.flatnonzero((n == L) & (L < g)):
        toks[i, n[i]] = RJ.inverse_cdf(RJ.final_weights(np.asarray(target_probs)[i, g]),
                                       resample_uniforms[i])
    return n, toks


def _with(**patches):
    def run(*args, **kw):
        with _patched(**patches):
            return RJ.rejection_sample(*args, **kw)
    return run


PLANTS = {
    # name: (sampler, the conformance tests that must fail on it)
    "rs_residual_not_clipped": (_with(final_weights=_residual_not_clipped), ("distribution",)),
    "rs_bonus_after_rejection": (_bonus_after_rejection, ("distribution", "structure")),
    "rs_ratio_swapped": (_with(accepts=_ratio_swapped), ("distribution",)),
    "rs_residual_not_renormalized": (_with(inverse_cdf=_not_renormalized), ("distribution",)),
    "rs_draft_probs_after_top_p": (_draft_after_top_p, ("distribution",)),
    "rs_accept_at_equality": (_with(accepts=_accept_at_equality),
                              ("exact_ties_follow_the_strict_rules",
                               "greedy_is_greedy_target_decoding")),
    "rs_inverse_cdf_ties_left": (_with(inverse_cdf=_cdf_ties_left),
                                 ("exact_ties_follow_the_strict_rules",)),
    "rs_target_rows_shifted": (_target_rows_shifted,
                               ("draft_equal_to_target_accepts_every_draft",)),
    "rs_bonus_from_the_last_row": (_bonus_from_the_last_row, ("padding_is_never_read",)),
}


def _backend(name: str, sampler) -> SimpleNamespace:
    @functools.wraps(RJ.rejection_sample)
    def rejection_sample(*args, **kw):
        return sampler(*args, **kw)
    return SimpleNamespace(NAME=f"mutant-{name}", DTYPES=("float32",),
                           asarray=ref_backend.asarray, to_numpy=ref_backend.to_numpy,
                           rejection_sample=ref_backend._in_input_dtype(rejection_sample))


def register(mutants: dict, must_catch: dict) -> None:
    for name, (sampler, catches) in PLANTS.items():
        mutants[name] = ("rejection_sample", _backend(name, sampler))
        must_catch[name] = catches

