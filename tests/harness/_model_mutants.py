"""Planted bugs in whole models: the float32 reference model with one mistake patched into
the module for the duration of each call. Registered into mutants.MUTANTS by ``register``."""

from __future__ import annotations

import contextlib
import functools
import importlib
from types import SimpleNamespace

import numpy as np

from lmspec import reference as R
from lmspec.backends import _reference_backend as ref_backend
from lmspec.spec._model_config import ModelConfig

M = importlib.import_module("lmspec.reference.model")  # the module, not the function


@contextlib.contextmanager
def _patched(owner, **attrs):
    old = {n: getattr(owner, n) for n in attrs}
    try:
        for n, v in attrs.items():
            setattr(owner, n, v)
        yield
    finally:
        for n, v in old.items():
            setattr(owner, n, v)


def _backend(name: str, patch, grad=None) -> SimpleNamespace:
    def wrap(fn):
        @functools.wraps(fn)
        def run(params, *args, **kw):
            with patch():
                return ref_backend._params_dtype(fn)(params, *args, **kw)
        return run
    ns = SimpleNamespace(NAME=f"mutant-{name}", DTYPES=("float32",),
                         asarray=ref_backend.asarray, to_numpy=ref_backend.to_numpy,
                         model=wrap(R.model), model_loss=wrap(R.model_loss),
                         model_grad=wrap(grad or R.model_grad))
    return ns


def _sdpa_kv_modulo(q, k, v, sq=None, sk=None, **kw):
    g = q.shape[2] // k.shape[2]  # query head h reads kv head h % Hkv, not h // G
    return R.sdpa(q, np.tile(k, (1, 1, g, 1)), np.tile(v, (1, 1, g, 1)), sq, sk, **kw)


def _sdpa_no_segments(q, k, v, sq=None, sk=None, **kw):
    return R.sdpa(q, k, v, None, None, **kw)


def _sdpa_boundary_shifted(q, k, v, sq=None, sk=None, **kw):
    """Key segment ids from document starts with an off-by-one: each document's last key is
    labelled as the next document's (the next document's first query sees it)."""
    if sk is not None:
        sk = np.concatenate([np.asarray(sk)[:, 1:], np.asarray(sk)[:, -1:]], axis=1)
    return R.sdpa(q, k, v, sq, sk, **kw)


def _sdpa_not_causal(q, k, v, sq=None, sk=None, **kw):
    return R.sdpa(q, k, v, sq, sk, **dict(kw, causal=False, window=None))


_orig_cached_length = M.cached_length
_orig_rope_kw = M._rope_kw
_orig_shifted = M._shifted
_orig_layer_kinds = ModelConfig.layer_kinds


def _mla_absorbed_without_kv_norm(h, pos, **kw):
    if kw["form"] == "absorbed":
        kw = dict(kw, kv_norm_weight=np.ones_like(kw["kv_norm_weight"]))
    return R.mla(h, pos, **kw)


def _moe_gate_up_swapped(x, ids, w, w_gate, w_up, *rest, **kw):
    return R.moe_layer(x, ids, w, w_up, w_gate, *rest, **kw)


def _rms_over_batch(x, weight=None, *, eps=1e-6, weight_offset=0.0):
    """The final norm's mean square over the whole batch (B, T, D) instead of each row."""
    x = np.asarray(x)
    if x.ndim == 3 and x.shape[0] > 1 and weight is not None:
        ms = np.mean(np.asarray(x, np.float64) ** 2, axis=(0, 2), keepdims=True)
        return (x / np.sqrt(ms + eps) * weight).astype(x.dtype)
    return R.rms_norm(x, weight, eps=eps, weight_offset=weight_offset)


def _router_grad_dropped(params, tokens, targets, *args, **kw):
    loss, metrics, grads = R.model_grad(params, tokens, targets, *args, **kw)
    return loss, metrics, {n: (np.zeros_like(g) if n.endswith("moe.router") else g)
                           for n, g in grads.items()}


def _weights_ignored(params, tokens, targets, *args, weights=None, **kw):
    """The per-target weights dropped: every target weighs 1."""
    return R.model_grad(params, tokens, targets, *args, **kw)


def _weights_shifted(params, tokens, targets, *args, weights=None, **kw):
    """Each target weighted by its left neighbour's weight (the off-by-one of a log-prob
    window against its completion mask)."""
    if weights is not None:
        w = np.asarray(weights)
        weights = np.concatenate([w[:, :1], w[:, :-1]], axis=1)
    return R.model_grad(params, tokens, targets, *args, weights=weights, **kw)


def _mtp_token_not_shifted(a, k, fill):
    """MTP module k reads t_{i+k-1} instead of t_{i+k} (the token shift is the one call with
    fill 0; the targets' and segment ids' shifts are right)."""
    return _orig_shifted(a, k - 1 if fill == 0 else k, fill)


PLANTS = {
    # name: (patch, catches, grad)
    "model_gqa_kv_head_modulo": (lambda: _patched(M, sdpa=_sdpa_kv_modulo), ("forward",), None),
    # (positions that run on across packed documents instead of restarting are invisible to a
    # RoPE model's logits: each document's positions shift by a constant, and RoPE scores
    # depend on differences only. Not a plant; the off-by-one document boundary is.)
    "model_document_boundary_off_by_one": (lambda: _patched(M, sdpa=_sdpa_boundary_shifted),
                                           ("packed_equals_alone",), None),
    "model_attention_crosses_documents": (lambda: _patched(M, sdpa=_sdpa_no_segments),
                                          ("packed_equals_alone",), None),
    "model_causal_mask_dropped": (lambda: _patched(M, sdpa=_sdpa_not_causal),
                                  ("causal_prefix",), None),
    "model_decode_position_off_by_one": (
        lambda: _patched(M, cached_length=lambda c: _orig_cached_length(c) + (1 if c else 0)),
        ("prefill_then_decode_equals_full",), None),
    "model_mla_absorbed_skips_kv_norm": (lambda: _patched(M, mla=_mla_absorbed_without_kv_norm),
                                         ("mla_absorbed_equals_naive",), None),
    "model_moe_gate_and_up_swapped": (lambda: _patched(M, moe_layer=_moe_gate_up_swapped),
                                      ("moe_with_one_expert_equals_dense",), None),
    "model_norm_statistics_over_the_batch": (lambda: _patched(M, rms_norm=_rms_over_batch),
                                             ("batch_invariance",), None),
    "model_hybrid_softmax_layers_other_rope_convention": (
        lambda: _patched(M, _rope_kw=lambda cfg: dict(
            _orig_rope_kw(cfg), interleaved=cfg.rope_interleaved ^ (cfg.hybrid is not None))),
        ("all_softmax_hybrid_equals_dense",), None),
    "model_router_gradient_dropped": (contextlib.nullcontext, ("loss_and_gradients",),
                                      _router_grad_dropped),
    "model_loss_weights_ignored": (contextlib.nullcontext, ("weighted_loss_and_gradients",),
                                   _weights_ignored),
    "model_loss_weights_shifted_by_one_target": (
        contextlib.nullcontext, ("weighted_loss_and_gradients",), _weights_shifted),
    "model_mtp_reads_the_unshifted_token": (
        lambda: _patched(M, _shifted=_mtp_token_not_shifted), ("loss_and_gradients",), None),
}


def register(mutants: dict, must_catch: dict) -> None:
    for name, (patch, catches, grad) in PLANTS.items():
        mutants[name] = ("model", _backend(name, patch, grad))
        must_catch[name] = catches
