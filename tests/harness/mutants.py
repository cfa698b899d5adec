"""Planted-bug backends: plausible mistakes the conformance suite must catch.

Each mutant is the reference run in float32 (so its healthy parts are exactly the naive
baseline) with one deliberate bug in one component. ``MUTANTS`` maps name -> (stem, backend).
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import numpy as np

from lmspec import reference as R
from lmspec.backends import _reference_backend as ref_backend
# the package re-exports functions under their module names: fetch the modules themselves
rope_ref = importlib.import_module("lmspec.reference.rope")
sdpa_ref = importlib.import_module("lmspec.reference.sdpa")

MUTANTS: dict[str, tuple[str, SimpleNamespace]] = {}


def mutant(stem: str, fwd=None, vjp=None):
    """Register a backend whose ``stem`` is replaced by a buggy forward and/or backward."""
    def register(fn):
        name = fn.__name__
        ns = SimpleNamespace(NAME=f"mutant-{name}", DTYPES=("float32",),
                             asarray=ref_backend.asarray, to_numpy=ref_backend.to_numpy)
        forward, backward = fn() if fwd is None and vjp is None else (fwd, vjp)
        setattr(ns, stem, ref_backend._in_input_dtype(forward or getattr(R, stem)))
        setattr(ns, f"{stem}_vjp",
                ref_backend._vjp_in_input_dtype(backward or getattr(R, f"{stem}_vjp")))
        MUTANTS[name] = (stem, ns)
        return ns  # the module attribute is the backend: 'mutants:<name>' loads it
    return register


def _f32(x):
    return np.asarray(x, np.float32)


@mutant("rms_norm")
def rms_norm_eps_outside_root():
    def fwd(x, weight=None, *, eps=1e-6, weight_offset=0.0):
        x = _f32(x)
        y = x / (np.sqrt(np.mean(x * x, -1, keepdims=True)) + np.float32(eps))
        return y if weight is None else y * (np.float32(weight_offset) + weight)
    return fwd, None


@mutant("rms_norm")
def rms_norm_ignores_gemma_offset():
    def fwd(x, weight=None, *, eps=1e-6, weight_offset=0.0):
        return R.rms_norm(x, weight, eps=eps, weight_offset=0.0)
    return fwd, None


@mutant("rms_norm")
def rms_norm_backward_missing_projection():
    def vjp(dy, x, weight=None, *, eps=1e-6, weight_offset=0.0):
        grads = R.rms_norm_vjp(dy, x, weight, eps=eps, weight_offset=weight_offset)
        rstd = 1 / np.sqrt(np.mean(_f32(x) ** 2, -1, keepdims=True) + np.float32(eps))
        g = dy if weight is None else dy * (np.float32(weight_offset) + weight)
        return dict(grads, x=(g * rstd).astype(np.float32))  # dropped: - xhat * mean(g xhat)
    return None, vjp


@mutant("layer_norm")
def layer_norm_unbiased_variance():
    def fwd(x, weight=None, bias=None, *, eps=1e-5, weight_offset=0.0):
        x = _f32(x)
        n = max(x.shape[-1] - 1, 1)
        xc = x - x.mean(-1, keepdims=True)
        y = xc / np.sqrt((xc * xc).sum(-1, keepdims=True) / n + np.float32(eps))
        if weight is not None:
            y = y * (np.float32(weight_offset) + weight)
        return y if bias is None else y + bias
    return fwd, None


@mutant("softmax")
def softmax_without_max_subtraction():
    def fwd(x, *, axis=-1):
        with np.errstate(all="ignore"):
            e = np.exp(_f32(x))
            return e / e.sum(axis=axis, keepdims=True)
    return fwd, None


@mutant("softmax")
def softmax_uniform_answer():
    """The 'mean' answer: every row uniform. It must never pass."""
    def fwd(x, *, axis=-1):
        x = _f32(x)
        return np.full_like(x, 1.0 / max(x.shape[axis], 1))
    return fwd, None


@mutant("softmax")
def softmax_backward_without_centering():
    def vjp(dy, x, *, axis=-1):
        return {"x": (R.softmax(x, axis=axis) * dy).astype(np.float32)}
    return None, vjp


@mutant("log_softmax")
def log_softmax_as_log_of_softmax():
    def fwd(x, *, axis=-1):
        with np.errstate(divide="ignore"):
            return np.log(R.softmax(_f32(x), axis=axis))
    return fwd, None


@mutant("swiglu")
def swiglu_gate_on_the_up_projection():
    def fwd(x, w_gate, w_up, w_down):
        return R.swiglu(x, w_up, w_gate, w_down)
    return fwd, None


@mutant("geglu")
def geglu_always_tanh():
    def fwd(x, w_gate, w_up, w_down, *, approximate="tanh"):
        return R.geglu(x, w_gate, w_up, w_down, approximate="tanh")
    return fwd, None


@mutant("embedding")
def embedding_backward_overwrites_repeats():
    def vjp(dout, ids, table):
        dtable = np.zeros(table.shape, np.float32)
        dtable[np.asarray(ids).reshape(-1)] = np.asarray(dout).reshape(-1, table.shape[1])
        return {"table": dtable}
    return None, vjp


@mutant("embedding")
def embedding_negative_ids_wrap():
    def fwd(ids, table):
        return _f32(table)[np.asarray(ids)]  # no range check: -1 silently reads the last row
    return fwd, None


@mutant("rope")
def rope_other_convention():
    def fwd(x, positions, *, theta=10000.0, rotary_dim=None, interleaved=False, scaling=None):
        return R.rope(x, positions, theta=theta, rotary_dim=rotary_dim,
                      interleaved=not interleaved, scaling=scaling)
    return fwd, None


@mutant("rope")
def rope_ignores_position_ids():
    def fwd(x, positions, *, theta=10000.0, rotary_dim=None, interleaved=False, scaling=None):
        b, t = np.shape(positions)
        return R.rope(x, np.broadcast_to(np.arange(t), (b, t)), theta=theta,
                      rotary_dim=rotary_dim, interleaved=interleaved, scaling=scaling)
    return fwd, None


@mutant("rope")
def rope_yarn_without_temperature():
    original = rope_ref.rope_frequencies

    def fwd(x, positions, **kw):
        def no_temp(*a, **k):
            return original(*a, **k)[0], 1.0
        rope_ref.rope_frequencies = no_temp
        try:
            return R.rope(x, positions, **kw)
        finally:
            rope_ref.rope_frequencies = original
    return fwd, None


@mutant("sdpa")
def sdpa_gqa_heads_interleaved():
    """Query head h reads KV head h % Hkv (np.tile) instead of h // group (repeat_kv)."""
    def fwd(q, k, v, segment_ids_q=None, segment_ids_kv=None, **kw):
        g = q.shape[2] // k.shape[2]
        k2, v2 = np.tile(k, (1, 1, g, 1)), np.tile(v, (1, 1, g, 1))
        return R.sdpa(q, k2, v2, segment_ids_q, segment_ids_kv, **kw)
    return fwd, None


def _with_visible(mask_fn):
    """Run the reference with a replaced visibility rule."""
    def fwd(*args, **kw):
        original = sdpa_ref.visible
        sdpa_ref.visible = mask_fn
        try:
            return R.sdpa(*args, **kw)
        finally:
            sdpa_ref.visible = original
    return fwd


@mutant("sdpa")
def sdpa_causal_top_left():
    """Causal mask aligned top-left (query i at position i), the classic offset bug."""
    def visible(tq, tk, sq=None, skv=None, *, causal=False, window=None, batch=1):
        return _visible_shifted(tq, tk, sq, skv, causal, window, batch, shift=tq - tk)
    return _with_visible(visible), None


@mutant("sdpa")
def sdpa_causal_excludes_diagonal():
    def visible(tq, tk, sq=None, skv=None, *, causal=False, window=None, batch=1):
        return _visible_shifted(tq, tk, sq, skv, causal, window, batch, shift=-1)
    return _with_visible(visible), None


@mutant("sdpa")
def sdpa_window_off_by_one():
    def visible(tq, tk, sq=None, skv=None, *, causal=False, window=None, batch=1):
        return _ORIG_VISIBLE(tq, tk, sq, skv, causal=causal,
                             window=None if window is None else window + 1, batch=batch)
    return _with_visible(visible), None


@mutant("sdpa")
def sdpa_nan_on_fully_masked_rows():
    def fwd(q, k, v, segment_ids_q=None, segment_ids_kv=None, *, causal=False, window=None,
            softcap=None, scale=None):
        out, lse = R.sdpa(q, k, v, segment_ids_q, segment_ids_kv, causal=causal, window=window,
                          softcap=softcap, scale=scale)
        dead = np.isneginf(lse)[..., None]  # what a plain softmax over all -inf produces
        return np.where(dead, np.nan, out).astype(np.float32), lse
    return fwd, None


@mutant("sdpa")
def sdpa_softcap_ignored():
    def fwd(*args, softcap=None, **kw):
        return R.sdpa(*args, **kw)
    return fwd, None


@mutant("sdpa")
def sdpa_all_zeros_answer():
    def fwd(q, k, v, segment_ids_q=None, segment_ids_kv=None, **kw):
        out, lse = R.sdpa(q, k, v, segment_ids_q, segment_ids_kv, **kw)
        return np.zeros_like(out), lse
    return fwd, None


@mutant("cross_entropy")
def cross_entropy_counts_ignored_in_mean():
    def fwd(logits, targets, *, ignore_index=-100, label_smoothing=0.0, z_loss=0.0):
        loss = R.cross_entropy(logits, targets, ignore_index=ignore_index,
                               label_smoothing=label_smoothing, z_loss=z_loss)
        t = np.asarray(targets)
        n_valid = max(int((t != ignore_index).sum()), 1)
        return loss * np.float32(n_valid / max(t.size, 1))
    return fwd, None


@mutant("cross_entropy")
def cross_entropy_smoothing_over_other_classes():
    """Smoothing mass eps/(V-1) on the non-target classes (another convention, not torch's)."""
    def fwd(logits, targets, *, ignore_index=-100, label_smoothing=0.0, z_loss=0.0):
        v = np.shape(logits)[-1]
        eps = label_smoothing * v / (v - 1) if v > 1 else label_smoothing
        return R.cross_entropy(logits, targets, ignore_index=ignore_index,
                               label_smoothing=min(eps, 1.0), z_loss=z_loss)
    return fwd, None


@mutant("cross_entropy")
def cross_entropy_without_z_loss():
    def fwd(logits, targets, *, z_loss=0.0, **kw):
        return R.cross_entropy(logits, targets, **kw)
    return fwd, None


_ORIG_VISIBLE = sdpa_ref.visible


def _visible_shifted(tq, tk, sq, skv, causal, window, batch, shift):
    """The reference's visibility with query positions moved by ``shift``."""
    pos_q = np.arange(tq)[:, None] + (tk - tq) + shift
    pos_k = np.arange(tk)[None, :]
    mask = np.ones((tq, tk), dtype=bool)
    if causal:
        mask &= pos_k <= pos_q
    if window is not None:
        mask &= pos_k > pos_q - window
    mask = np.broadcast_to(mask, (batch, 1, tq, tk))
    if sq is not None:
        mask = mask & (np.asarray(sq)[:, :, None] == np.asarray(skv)[:, None, :])[:, None]
    return mask

