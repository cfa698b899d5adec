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



# ---- attention_merge, linear_attention, lightning_attention
linear_ref = importlib.import_module("lmspec.reference.linear_attention")


def _with_decay_mask(mask_fn, forms=("parallel", "recurrent", "chunked")):
    """Run linear_attention with a replaced decay mask (in the forms named)."""
    def fwd(*args, form="parallel", **kw):
        original = linear_ref.decay_mask
        if form in forms:
            linear_ref.decay_mask = mask_fn
        try:
            return R.linear_attention(*args, form=form, **kw)
        finally:
            linear_ref.decay_mask = original
    return fwd


@mutant("linear_attention")
def linear_attention_decay_exponent_plus_one():
    """D_ts = gamma^(t - s + 1): the current token decayed once too often."""
    original = linear_ref.decay_mask

    def mask(log_decay, h, n):
        return original(log_decay, h, n) * linear_ref.gamma_pow(log_decay, h, np.ones((n, n)))
    return _with_decay_mask(mask), None


@mutant("linear_attention")
def linear_attention_parallel_sees_the_future():
    """The parallel form's mask without its causal half: D_ts = gamma^|t - s| for every s."""
    def mask(log_decay, h, n):
        t = np.arange(n)
        return linear_ref.gamma_pow(log_decay, h, np.abs(t[:, None] - t[None, :]))
    return _with_decay_mask(mask, forms=("parallel",)), None


@mutant("attention_merge")
def attention_merge_averages_outs():
    """The partial outputs averaged instead of weighted by exp(lse_s - lse)."""
    def fwd(outs, lses):
        _, lse = R.attention_merge(outs, lses)
        return np.mean(_f32(outs), axis=0), lse
    return fwd, None


@mutant("lightning_attention")
def lightning_attention_drops_initial_state():
    def fwd(q, k, v, log_decay=None, initial_state=None, **kw):
        return R.lightning_attention(q, k, v, log_decay, None, **kw)
    return fwd, None


# ----------------------------------------------------------------------------- mla

mla_ref = importlib.import_module("lmspec.reference.mla")


@mutant("mla")
def mla_absorbed_without_mscale():
    """The absorbed path forgets the YaRN mscale**2 on the softmax scale (naive keeps it)."""
    def fwd(*args, form="naive", mscale_all_dim=0.0, **kw):
        return R.mla(*args, form=form, mscale_all_dim=0.0 if form == "absorbed" else
                     mscale_all_dim, **kw)
    return fwd, None


@mutant("mla")
def mla_latent_not_normalized():
    """kv_a_layernorm skipped: the cache holds kv_norm_weight * latent, not its RMSNorm."""
    def fwd(x, positions, w_uq, w_dkv, kv_norm_weight, *args, **kw):
        original = mla_ref.rms_norm

        def norm(a, weight=None, **nkw):
            return a * weight if weight is kv_norm_weight else original(a, weight, **nkw)
        mla_ref.rms_norm = norm
        try:
            return R.mla(x, positions, w_uq, w_dkv, kv_norm_weight, *args, **kw)
        finally:
            mla_ref.rms_norm = original
    return fwd, None


@mutant("mla")
def mla_rope_layout_flipped():
    """HF's de-interleaved output read as interleaved pairs (or the reverse)."""
    def fwd(*args, interleaved=True, **kw):
        return R.mla(*args, interleaved=not interleaved, **kw)
    return fwd, None


@mutant("mla")
def mla_causal_ignores_cache_offset():
    """Causal mask top-left: with a cache, query i sees keys j <= i, not j <= i + Tc."""
    def visible(tq, tk, sq=None, skv=None, *, causal=False, window=None, batch=1):
        return _visible_shifted(tq, tk, sq, skv, causal, window, batch, shift=tq - tk)

    def fwd(*args, **kw):
        original = sdpa_ref.visible
        sdpa_ref.visible = visible
        try:
            return R.mla(*args, **kw)
        finally:
            sdpa_ref.visible = original
    return fwd, None
