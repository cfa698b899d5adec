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
# name -> the conformance tests (test names without "test_") that must be among those failing:
# proof that a given property can fail, not only that something catches the plant
MUST_CATCH: dict[str, tuple[str, ...]] = {}


def mutant(stem: str, fwd=None, vjp=None, catches: tuple[str, ...] = ()):
    """Register a backend whose ``stem`` is replaced by a buggy forward and/or backward;
    ``catches`` names the tests that must fail on it."""
    def register(fn):
        name = fn.__name__
        MUST_CATCH[name] = catches
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


# ---- plants for the properties that compare a backend with itself (each names its test)


def _spec(stem: str):
    return importlib.import_module(f"lmspec.spec.{stem}")


@mutant("rms_norm", catches=("rows_are_independent",))
def rms_norm_statistic_over_the_whole_batch():
    """The mean square taken over every element, not per row (a batch-norm slip)."""
    def fwd(x, weight=None, *, eps=1e-6, weight_offset=0.0):
        _spec("rms_norm").check_args(x, weight, eps=eps, weight_offset=weight_offset)
        x = _f32(x)
        ms = np.mean(x * x) if x.size else np.float32(0)
        y = x / np.sqrt(ms + np.float32(eps))
        return y if weight is None else y * (np.float32(weight_offset) + weight)
    return fwd, None


@mutant("softmax", catches=("shift_invariance",))
def softmax_clamps_logits():
    """Logits clamped to [-50, 50] before exp, a 'safety' clamp: no longer shift invariant."""
    def fwd(x, *, axis=-1):
        return R.softmax(np.clip(_f32(x), -50, 50), axis=axis).astype(np.float32)
    return fwd, None


@mutant("layer_norm", catches=("shift_invariance",))
def layer_norm_one_pass_variance():
    """var = E[x^2] - E[x]^2 in float32: cancels when the mean is large against the spread."""
    def fwd(x, weight=None, bias=None, *, eps=1e-5, weight_offset=0.0):
        _spec("layer_norm").check_args(x, weight, bias, eps=eps, weight_offset=weight_offset)
        x = _f32(x)
        mean = x.mean(-1, keepdims=True)
        var = np.maximum((x * x).mean(-1, keepdims=True) - mean * mean, 0)
        y = (x - mean) / np.sqrt(var + np.float32(eps))
        if weight is not None:
            y = y * (np.float32(weight_offset) + weight)
        return y if bias is None else y + bias
    return fwd, None


@mutant("embedding", catches=("flat_ids_equal_shaped_ids",))
def embedding_ids_read_column_major():
    def fwd(ids, table):
        ids = np.asarray(ids)
        flat = ids.reshape(-1, order="F") if ids.size else ids.reshape(-1)
        return R.embedding(flat, table).reshape(ids.shape + (np.shape(table)[1],))
    return fwd, None


@mutant("rope", catches=("preserves_norms",))
def rope_sine_sign_lost():
    """y1 = x1 cos + x2 sin, y2 = x2 cos + x1 sin: the rotation's minus sign dropped."""
    def fwd(x, positions, *, theta=10000.0, rotary_dim=None, interleaved=False, scaling=None):
        _spec("rope").check_args(x, positions, theta=theta, rotary_dim=rotary_dim,
                                 interleaved=interleaved, scaling=scaling)
        rope_ref._check_positions(positions)
        x = _f32(x)
        r = x.shape[-1] if rotary_dim is None else rotary_dim
        cos, sin = rope_ref._cos_sin(positions, r, theta, scaling)
        u, v = rope_ref._split(x, r, interleaved)
        out = rope_ref._join(u * cos + v * sin, u * sin + v * cos, x[..., r:], interleaved)
        return out.astype(np.float32)
    return fwd, None


@mutant("rope", catches=("depends_only_on_relative_position",))
def rope_cache_clamps_positions():
    """A cos/sin cache of 128 positions indexed with clamping: positions past it reuse row 127."""
    def fwd(x, positions, *, theta=10000.0, rotary_dim=None, interleaved=False, scaling=None):
        return R.rope(x, np.minimum(positions, 127), theta=theta, rotary_dim=rotary_dim,
                      interleaved=interleaved, scaling=scaling)
    return fwd, None


@mutant("sdpa", catches=("causal_ignores_the_future",))
def sdpa_causal_sees_the_next_token():
    def visible(tq, tk, sq=None, skv=None, *, causal=False, window=None, batch=1):
        return _visible_shifted(tq, tk, sq, skv, causal, window, batch, shift=1)
    return _with_visible(visible), None


@mutant("sdpa", catches=("key_order_does_not_matter_without_position_masks",))
def sdpa_split_kv_outputs_averaged():
    """Split-KV in two halves combined by a plain mean of the outputs instead of by their lse."""
    def fwd(q, k, v, segment_ids_q=None, segment_ids_kv=None, **kw):
        tk = np.shape(k)[1]
        if tk < 2:
            return R.sdpa(q, k, v, segment_ids_q, segment_ids_kv, **kw)
        h = tk // 2
        kv = lambda a, s: None if a is None else np.asarray(a)[:, s]  # noqa: E731
        parts = [R.sdpa(q, kv(k, s), kv(v, s), segment_ids_q, kv(segment_ids_kv, s), **kw)
                 for s in (slice(0, h), slice(h, tk))]
        out = (parts[0][0] + parts[1][0]) / 2
        lse = np.logaddexp(parts[0][1], parts[1][1])
        return out.astype(np.float32), lse.astype(np.float32)
    return fwd, None


@mutant("cross_entropy", catches=("ignored_rows_are_as_if_absent",))
def cross_entropy_mean_over_all_rows():
    """Ignored rows contribute 0 but still count in the mean's denominator."""
    def fwd(logits, targets, *, ignore_index=-100, label_smoothing=0.0, z_loss=0.0):
        loss = R.cross_entropy(logits, targets, ignore_index=ignore_index,
                               label_smoothing=label_smoothing, z_loss=z_loss)
        t = np.asarray(targets)
        return np.float32(loss * int((t != ignore_index).sum()) / max(t.size, 1))
    return fwd, None


@mutant("cross_entropy", catches=("row_order_does_not_matter",))
def cross_entropy_targets_shifted_inside():
    """Targets rolled by one row inside the loss (a next-token shift done twice)."""
    def fwd(logits, targets, **kw):
        t = np.asarray(targets).reshape(-1)
        rolled = np.roll(t, 1).reshape(np.shape(targets)) if t.size else np.asarray(targets)
        return R.cross_entropy(logits, rolled, **kw)
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


# ----------------------------------------------------------------------------- tokenizer, bpe_train
# Dtype-free stems: a plant is a backend with DTYPES = () whose stem is a buggy factory.

tok_ref = importlib.import_module("lmspec.reference.tokenizer")
train_ref = importlib.import_module("lmspec.reference.bpe_train")


def mutant_module(stem: str, catches: tuple[str, ...] = ()):
    """Register a dtype-free backend whose ``stem`` is the callable ``fn()`` returns."""
    def register(fn):
        name = fn.__name__
        MUST_CATCH[name] = catches
        ns = SimpleNamespace(NAME=f"mutant-{name}", DTYPES=(), asarray=ref_backend.asarray,
                             to_numpy=ref_backend.to_numpy)
        setattr(ns, stem, fn())
        MUTANTS[name] = (stem, ns)
        return ns
    return register


def _tokenizer_factory(cls, pattern_fn=lambda p: p):
    def tokenizer(ranks, *, pattern, special_tokens=None):
        tok_ref.check_args(ranks, pattern=pattern, special_tokens=special_tokens)
        return cls(ranks, pattern_fn(pattern), special_tokens)
    return tokenizer


def _ordinary_with(parts_fn):
    """A Tokenizer whose per-piece BPE is ``parts_fn(piece bytes, ranks) -> parts``."""
    class Planted(tok_ref.Tokenizer):
        def _ordinary(self, text):
            return [self.ranks[p] for piece in tok_ref.pretokenize(text, self.pattern)
                    for p in parts_fn(piece.encode("utf-8"), self.ranks)]
    return Planted


@mutant_module("tokenizer", catches=("nasty_text", "matches_reference_on_random_text"))
def tokenizer_rightmost_on_equal_rank():
    """Equal ranks merge rightmost first: 'aaa' -> a + aa."""
    def parts(piece, ranks):
        if piece in ranks:
            return [piece]
        real_push, real_pop = tok_ref.heappush, tok_ref.heappop  # heap keyed (rank, -start)

        def push(heap, item):
            real_push(heap, (item[0], -item[1], item[2]))

        def pop(heap):
            r, i, end = real_pop(heap)
            return r, -i, end
        tok_ref.heappush, tok_ref.heappop = push, pop
        try:
            return tok_ref.merge_parts(piece, ranks)
        finally:
            tok_ref.heappush, tok_ref.heappop = real_push, real_pop
    return _tokenizer_factory(_ordinary_with(parts))


@mutant_module("tokenizer", catches=("nasty_text",))
def tokenizer_possessive_read_as_repeat():
    """cl100k's \\p{N}{1,3}+ read as (\\p{N}{1,3})+ (HF's regex engine): digit runs whole."""
    return _tokenizer_factory(tok_ref.Tokenizer,
                              lambda p: p.replace(r"\p{N}{1,3}+", r"(?:\p{N}{1,3})+"))


@mutant_module("tokenizer", catches=("long_piece_without_a_break",))
def tokenizer_chunks_long_pieces():
    """Pieces over 4096 bytes encoded in 4096-byte chunks (a 'bound the work' shortcut)."""
    def parts(piece, ranks):
        if piece in ranks:
            return [piece]
        return [p for k in range(0, len(piece), 4096)
                for p in tok_ref.merge_parts(piece[k:k + 4096], ranks)]
    return _tokenizer_factory(_ordinary_with(parts))


@mutant_module("tokenizer", catches=("every_token_encodes_to_itself",))
def tokenizer_stops_merging_at_two_parts():
    """No whole-piece shortcut, and the merge loop stops when two parts are left."""
    def parts(piece, ranks):
        out = [piece[i:i + 1] for i in range(len(piece))]
        while len(out) > 2:
            cands = [(ranks[a + b], i) for i, (a, b) in enumerate(zip(out, out[1:]))
                     if a + b in ranks]
            if not cands:
                break
            _, i = min(cands)
            out[i:i + 2] = [out[i] + out[i + 1]]
        return out
    return _tokenizer_factory(_ordinary_with(parts))


@mutant_module("tokenizer", catches=("nasty_text",))
def tokenizer_decode_drops_nul():
    """decode_bytes strips NUL bytes (a C-string habit)."""
    class Planted(tok_ref.Tokenizer):
        def decode_bytes(self, ids):
            return super().decode_bytes(ids).replace(b"\x00", b"")
    return _tokenizer_factory(Planted)


@mutant_module("tokenizer", catches=("decode_replaces_invalid_and_partial_utf8",))
def tokenizer_decode_drops_incomplete_tail():
    """An incomplete UTF-8 sequence at the end is dropped instead of replaced."""
    class Planted(tok_ref.Tokenizer):
        def decode(self, ids, errors="replace"):
            data = self.decode_bytes(ids)
            for k in (1, 2, 3):  # a lead byte of a longer sequence within the last 3 bytes
                if len(data) >= k and data[-k] >= 0xC0 and k < (
                        2 if data[-k] < 0xE0 else 3 if data[-k] < 0xF0 else 4):
                    data = data[:-k]
                    break
            return data.decode("utf-8", errors)
    return _tokenizer_factory(Planted)


@mutant_module("tokenizer", catches=("special_tokens",))
def tokenizer_allowed_special_as_text():
    """Allowed specials are encoded as plain text (the raise still works)."""
    class Planted(tok_ref.Tokenizer):
        def encode(self, text, *, allowed_special=frozenset(), disallowed_special="all"):
            super().encode(text, allowed_special=allowed_special,
                           disallowed_special=disallowed_special)
            return self.encode_ordinary(text)
    return _tokenizer_factory(Planted)


@mutant_module("tokenizer", catches=("batch_equals_single",))
def tokenizer_batch_skips_empty_texts():
    class Planted(tok_ref.Tokenizer):
        def encode_batch(self, texts, **kw):
            return [self.encode(t, **kw) for t in texts if t]
    return _tokenizer_factory(Planted)


@mutant_module("tokenizer", catches=("ids_are_within_the_vocabulary",))
def tokenizer_n_vocab_counts_tokens():
    """n_vocab = number of tokens (wrong where ids have gaps, as cl100k's specials do)."""
    class Planted(tok_ref.Tokenizer):
        def __init__(self, *args):
            super().__init__(*args)
            self.n_vocab = len(self.ranks) + len(self.special_tokens)
    return _tokenizer_factory(Planted)


@mutant_module("tokenizer", catches=("deterministic", "round_trip",
                                     "encoding_is_the_concatenation_of_the_pieces"))
def tokenizer_cache_stores_reversed_parts():
    """A piece cache that stores the parts reversed: right the first time only."""
    class Planted(tok_ref.Tokenizer):
        def _ordinary(self, text):
            cache = self.__dict__.setdefault("_cache", {})
            out = []
            for piece in tok_ref.pretokenize(text, self.pattern):
                ids = cache.get(piece)
                if ids is None:
                    ids = tok_ref.bpe_encode_piece(piece.encode("utf-8"), self.ranks)
                    cache[piece] = ids[::-1]
                out += ids
            return out
    return _tokenizer_factory(Planted)


@mutant_module("tokenizer", catches=("lone_surrogates_become_replacement_characters",))
def tokenizer_drops_lone_surrogates():
    class Planted(tok_ref.Tokenizer):
        def encode_ordinary(self, text):
            return super().encode_ordinary(text.encode("utf-8", "ignore").decode("utf-8"))
    return _tokenizer_factory(Planted)


@mutant_module("tokenizer", catches=("errors",))
def tokenizer_accepts_any_ranks():
    """No argument checks: a vocabulary without every byte is accepted."""
    def tokenizer(ranks, *, pattern, special_tokens=None):
        return tok_ref.Tokenizer(ranks, pattern, special_tokens)
    return tokenizer


@mutant_module("bpe_train", catches=("merges_equal_the_reference",))
def bpe_train_ties_to_the_largest_pair():
    def bpe_train(texts, *, vocab_size, pattern, special_tokens=()):
        return _train_with_key(texts, vocab_size, pattern, special_tokens,
                               lambda counts: max(counts, key=lambda p: (counts[p], p)))
    return bpe_train


def _train_with_key(texts, vocab_size, pattern, special_tokens, choose, count=None,
                    merge=None):
    """The reference trainer with another pair choice, pair counting and/or merge pass."""
    train_ref.check_args(texts, vocab_size=vocab_size, pattern=pattern,
                         special_tokens=special_tokens)
    vocab = {i: bytes([i]) for i in range(256)}
    ids = {t: i for i, t in vocab.items()}
    words = {tuple(w): n for w, n in train_ref.words_of(texts, pattern, special_tokens).items()}
    merges = []
    while len(vocab) < vocab_size - len(special_tokens):
        counts = (count or train_ref.pair_counts)(words)
        if not counts:
            break
        pair = choose(counts)
        token = vocab[pair[0]] + vocab[pair[1]]
        if token not in ids:
            ids[token] = len(vocab)
            vocab[len(vocab)] = token
        words = {(merge or train_ref.merge_word)(w, pair, ids[token]): n
                 for w, n in words.items()}
        merges.append((vocab[pair[0]], vocab[pair[1]]))
    specials = {s: len(vocab) + k for k, s in enumerate(special_tokens)}
    return train_ref.BPEModel(ranks=dict(ids), merges=merges, special_tokens=specials,
                              pattern=pattern)


def _first_max(counts):
    return min(counts, key=lambda p: (-counts[p], p))


@mutant_module("bpe_train", catches=("merges_equal_the_reference",))
def bpe_train_counts_overlaps_once():
    """'aaa' counts (a, a) once, as a non-overlapping scan would."""
    def count(words):
        from collections import Counter

        counts = Counter()
        for w, n in words.items():
            i = 0
            while i + 1 < len(w):
                counts[(w[i], w[i + 1])] += n
                i += 2 if w[i] == w[i + 1] else 1
        return counts

    def bpe_train(texts, *, vocab_size, pattern, special_tokens=()):
        return _train_with_key(texts, vocab_size, pattern, special_tokens, _first_max, count)
    return bpe_train


@mutant_module("bpe_train", catches=("id_policy",))
def bpe_train_merges_right_to_left():
    """Each merge applied from the end of a word: 'a a a' becomes 'a aa', not 'aa a'."""
    def right_to_left(word, pair, new):
        return train_ref.merge_word(word[::-1], pair[::-1], new)[::-1]

    def bpe_train(texts, *, vocab_size, pattern, special_tokens=()):
        return _train_with_key(texts, vocab_size, pattern, special_tokens, _first_max,
                               merge=right_to_left)
    return bpe_train


@mutant_module("bpe_train", catches=("id_policy",))
def bpe_train_specials_first():
    """Specials take ids 256.. and merged tokens follow them."""
    def bpe_train(texts, *, vocab_size, pattern, special_tokens=()):
        model = R.bpe_train(texts, vocab_size=vocab_size, pattern=pattern,
                            special_tokens=special_tokens)
        shift = len(special_tokens)
        ranks = {t: (i if i < 256 else i + shift) for t, i in model.ranks.items()}
        return train_ref.BPEModel(ranks, model.merges,
                                  {s: 256 + k for k, s in enumerate(special_tokens)}, pattern)
    return bpe_train


@mutant_module("bpe_train", catches=("special_tokens_never_merge",))
def bpe_train_merges_through_specials():
    """Special-token text is trained on like any text."""
    def bpe_train(texts, *, vocab_size, pattern, special_tokens=()):
        model = R.bpe_train(texts, vocab_size=vocab_size - len(special_tokens), pattern=pattern)
        n = len(model.ranks)
        return train_ref.BPEModel(model.ranks, model.merges,
                                  {s: n + k for k, s in enumerate(special_tokens)}, pattern)
    return bpe_train


@mutant_module("bpe_train", catches=("errors",))
def bpe_train_without_checks():
    def bpe_train(texts, *, vocab_size, pattern, special_tokens=()):
        return _train_with_key(list(texts), max(vocab_size, 256), pattern,
                               tuple(dict.fromkeys(special_tokens)), _first_max)
    return bpe_train


# ----------------------------------------------------------------------------- moe_layer

moe_ref = importlib.import_module("lmspec.reference.moe_layer")


@mutant("moe_layer", catches=("forward",))
def moe_layer_combine_without_weights():
    """Expert outputs summed as they are: the routing weights never multiply them."""
    def fwd(x, topk_ids, topk_weights, *args, **kw):
        return R.moe_layer(x, topk_ids, np.ones_like(topk_weights), *args, **kw)
    return fwd, None


@mutant("moe_layer", catches=("forward", "no_token_lost_or_duplicated"))
def moe_layer_capacity_token_major():
    """Capacity claimed token by token (all of token 0's slots, then token 1's, ...), not the
    spec's slot priority."""
    def kept_token_major(topk_ids, n_experts, capacity):
        ids = np.asarray(topk_ids)
        kept = original(ids.T, n_experts, capacity).T if capacity is not None else None
        return np.ones(ids.shape, bool) if kept is None else kept

    original = moe_ref.kept_mask

    def fwd(*args, **kw):
        moe_ref.kept_mask = kept_token_major
        try:
            return R.moe_layer(*args, **kw)
        finally:
            moe_ref.kept_mask = original
    return fwd, None


@mutant("moe_layer", catches=("large_capacity_equals_no_capacity",
                                "kept_is_exact_and_within_capacity"))
def moe_layer_capacity_ignores_factor():
    """C = ceil(N k / E) whatever the capacity factor (a factor of 1 hard-wired)."""
    def fwd(*args, capacity_factor=None, **kw):
        return R.moe_layer(*args, capacity_factor=None if capacity_factor is None else 1.0,
                           **kw)
    return fwd, None


@mutant("moe_layer", catches=("forward",))
def moe_layer_shared_gate_ignored():
    """Qwen2-MoE's sigmoid gate on the shared expert dropped."""
    def fwd(*args, shared_gate=None, **kw):
        return R.moe_layer(*args, shared_gate=None, **kw)
    return fwd, None


@mutant("moe_layer", catches=("forward",))
def moe_layer_scatter_overwrites():
    """The combine writes each slot's output instead of adding it: a token keeps only its
    last slot's expert."""
    def fwd(x, topk_ids, topk_weights, *args, **kw):
        last = np.arange(np.shape(topk_weights)[1]) == np.shape(topk_weights)[1] - 1
        return R.moe_layer(x, topk_ids, topk_weights * last, *args, **kw)
    return fwd, None


@mutant("moe_layer", catches=("relabelling_experts_changes_nothing",))
def moe_layer_group_offset_off_by_one():
    """The grouped matmul reads expert e + 1's down projection (a shifted group offset)."""
    def fwd(x, topk_ids, topk_weights, w_gate, w_up, w_down, *args, **kw):
        return R.moe_layer(x, topk_ids, topk_weights, w_gate, w_up, np.roll(w_down, -1, 0),
                           *args, **kw)
    return fwd, None


@mutant("moe_layer", catches=("zero_weight_tokens_get_only_the_shared_expert",))
def moe_layer_renormalizes_weights():
    """The layer renormalizes the weights to sum 1 (the router's job, done twice); an
    all-zero row becomes uniform."""
    def fwd(x, topk_ids, topk_weights, *args, **kw):
        w = _f32(topk_weights)
        s = w.sum(axis=1, keepdims=True)
        w = np.where(s != 0, w / np.where(s != 0, s, 1), np.float32(1 / max(w.shape[1], 1)))
        return R.moe_layer(x, topk_ids, w, *args, **kw)
    return fwd, None


@mutant("moe_layer", catches=("backward",))
def moe_layer_dropped_slots_get_weight_gradient():
    """The backward ignores capacity for the weights: a dropped slot's weight gets the
    gradient it would have had if kept."""
    def vjp(ct, *args, capacity_factor=None, **kw):
        grads = R.moe_layer_vjp(ct, *args, capacity_factor=capacity_factor, **kw)
        free = R.moe_layer_vjp(ct, *args, capacity_factor=None, **kw)
        return dict(grads, topk_weights=free["topk_weights"])
    return None, vjp


# ----------------------------------------------------------------------------- moe_router,
# moe_balance_loss, moe_bias_update
router_ref = importlib.import_module("lmspec.reference.moe_router")
balance_ref = importlib.import_module("lmspec.reference.moe_balance_loss")


def mutant_without_vjp(stem: str, catches: tuple[str, ...] = ()):
    """Register a float32 backend whose non-differentiable ``stem`` is ``fn()`` (no vjp)."""
    def register(fn):
        name = fn.__name__
        MUST_CATCH[name] = catches
        ns = SimpleNamespace(NAME=f"mutant-{name}", DTYPES=("float32",),
                             asarray=ref_backend.asarray, to_numpy=ref_backend.to_numpy)
        setattr(ns, stem, ref_backend._in_input_dtype(fn()))
        MUTANTS[name] = (stem, ns)
        return ns
    return register


def _patched(module, name, replacement, fn):
    """Run ``fn`` with ``module.name`` replaced."""
    def run(*args, **kw):
        original = getattr(module, name)
        setattr(module, name, replacement)
        try:
            return fn(*args, **kw)
        finally:
            setattr(module, name, original)
    return run


@mutant("moe_router", catches=("forward", "bias_never_enters_the_weights"))
def moe_router_weights_from_biased_scores():
    """The weights gathered from s + bias (the selection scores) instead of s."""
    def fwd(logits, bias=None, **kw):
        ids, w, s = R.moe_router(logits, bias, **kw)
        sel = s if bias is None else s + _f32(bias)
        w = router_ref.weights_at(sel, ids, norm_topk_prob=kw.get("norm_topk_prob", False),
                                  routed_scaling_factor=kw.get("routed_scaling_factor", 1.0))
        return ids, w, s
    return fwd, None


@mutant("moe_router", catches=("forward",))
def moe_router_group_score_is_the_max():
    """Group score = the group's largest u (DeepSeek-V2's group_limited_greedy), not top-2 sum."""
    def kept(u, n_group, topk_group):
        n, e = u.shape
        best = np.asarray(u, np.float64).reshape(n, n_group, e // n_group).max(-1)
        keep = np.zeros((n, n_group), bool)
        np.put_along_axis(keep, router_ref._desc_order(best)[:, :topk_group], True, axis=-1)
        return keep
    return _patched(router_ref, "kept_groups", kept, R.moe_router), None


@mutant("moe_router", catches=("forward", "normalized_weights_sum_to_the_scaling_factor",
                               "top_k_all_experts_is_the_dense_weighted_sum"))
def moe_router_scaling_factor_applied_twice():
    def fwd(logits, bias=None, *, routed_scaling_factor=1.0, **kw):
        ids, w, s = R.moe_router(logits, bias, routed_scaling_factor=routed_scaling_factor, **kw)
        return ids, w * np.float32(routed_scaling_factor), s
    return fwd, None


@mutant("moe_router", catches=("forward", "bias_never_enters_the_weights"))
def moe_router_softmax_over_the_top_k_only():
    """Mixtral's 'softmax over the top-k logits' used whatever norm_topk_prob says: it is the
    renormalized top-k, so norm_topk_prob=False (Qwen's default) is lost."""
    def fwd(logits, bias=None, *, norm_topk_prob=False, **kw):
        return R.moe_router(logits, bias, norm_topk_prob=True, **kw)
    return fwd, None


@mutant("moe_router", catches=("forward",))
def moe_router_ties_highest_index_first():
    def order(v):
        v = np.asarray(v, np.float64)
        rev = np.argsort(-v[..., ::-1], axis=-1, kind="stable")
        return v.shape[-1] - 1 - rev
    return _patched(router_ref, "_desc_order", order, R.moe_router), None


@mutant("moe_router", catches=("forward_with_negative_corrected_scores",))
def moe_router_always_zero_fill():
    """The -inf fill of DeepSeek's code replaced by HF's old 0.0: masked experts can win."""
    def fwd(logits, bias=None, *, masked_group_fill="zero", **kw):
        return R.moe_router(logits, bias, masked_group_fill="zero", **kw)
    return fwd, None


@mutant("moe_router", catches=("backward",))
def moe_router_backward_ignores_the_scores_cotangent():
    def vjp(cts, logits, bias=None, **kw):
        return R.moe_router_vjp((None, cts[1], np.zeros(np.shape(cts[2]))), logits, bias, **kw)
    return None, vjp


@mutant("moe_balance_loss", catches=("forward",))
def moe_balance_loss_counts_over_tokens_not_assignments():
    """HF's load_balancing_loss_func convention (counts / N): k times the spec's value."""
    def fwd(scores, topk_ids, *, kind, n_seq=1, alpha=1.0):
        loss = R.moe_balance_loss(scores, topk_ids, kind=kind, n_seq=n_seq, alpha=alpha)
        k = 1 if topk_ids is None or kind != "switch" else np.shape(topk_ids)[1]
        return loss * np.float32(k)
    return fwd, None


@mutant("moe_balance_loss", catches=("forward",))
def moe_balance_loss_seq_over_the_whole_batch():
    """The sequence-wise loss computed once over all N tokens (n_seq ignored)."""
    def fwd(scores, topk_ids, *, kind, n_seq=1, alpha=1.0):
        return R.moe_balance_loss(scores, topk_ids, kind=kind, n_seq=1, alpha=alpha)
    return fwd, None


@mutant("moe_balance_loss", catches=("forward",))
def moe_balance_loss_seq_without_score_normalization():
    def fwd(scores, topk_ids, **kw):
        def raw(s):
            return _f32(s), None
        return _patched(balance_ref, "_normalized", raw, R.moe_balance_loss)(
            scores, topk_ids, **kw)
    return fwd, None


@mutant("moe_balance_loss", catches=("backward",))
def moe_balance_loss_seq_backward_without_centering():
    """d s' / d s taken as 1 / sum(s): the - sum_j f_j s'_j term of the quotient rule lost."""
    def vjp(dloss, scores, topk_ids, *, kind, n_seq=1, alpha=1.0):
        grads = R.moe_balance_loss_vjp(dloss, scores, topk_ids, kind=kind, n_seq=n_seq,
                                       alpha=alpha)
        if kind != "seq" or np.shape(scores)[0] == 0:
            return grads
        n, e = np.shape(scores)
        k, t = np.shape(topk_ids)[1], n // n_seq
        ids = np.asarray(topk_ids).reshape(n_seq, t * k)
        frac = np.stack([np.bincount(r, minlength=e) for r in ids]) * (e / (k * t))
        frac = np.repeat(frac, t, axis=0)
        den = _f32(scores).sum(-1, keepdims=True) + np.float32(1e-20)
        return {"scores": (float(dloss) * alpha / (n_seq * t) * frac / den).astype(np.float32)}
    return None, vjp


@mutant_without_vjp("moe_bias_update", catches=("forward", "every_bias_moves_toward_balance"))
def moe_bias_update_sign_flipped():
    """Overloaded experts' biases raised: the update pushes away from balance."""
    def fwd(bias, topk_ids, *, n_experts, gamma):
        new = R.moe_bias_update(bias, topk_ids, n_experts=n_experts, gamma=gamma)
        return (2 * _f32(bias) - new).astype(np.float32)
    return fwd


@mutant_without_vjp("moe_bias_update", catches=("balanced_load_leaves_the_bias_unchanged",))
def moe_bias_update_sign_of_zero_is_one():
    """At exactly the mean load the bias still rises (load <= mean counted as underloaded)."""
    def fwd(bias, topk_ids, *, n_experts, gamma):
        load = np.bincount(np.asarray(topk_ids).reshape(-1), minlength=n_experts)
        up = np.where(n_experts * load <= np.asarray(topk_ids).size, 1.0, -1.0)
        return (_f32(bias) + np.float32(gamma) * up.astype(np.float32)).astype(np.float32)
    return fwd


# ----------------------------------------------------------------------------- quantizers
# quant_int8, quant_int4, quant_fp8, quant_fp4: no gradient (mutant_without_vjp); most plants
# swap one helper of the reference module for the duration of the call (_patched)
q8_ref = importlib.import_module("lmspec.reference.quant_int8")
q4_ref = importlib.import_module("lmspec.reference.quant_int4")
fp8_ref = importlib.import_module("lmspec.reference.quant_fp8")
fp4_ref = importlib.import_module("lmspec.reference.quant_fp4")
minifloat = importlib.import_module("lmspec.reference._minifloat")
_int8_scales, _int4_scales = q8_ref.int8_scales, q4_ref.int4_scales
_fp8_scales, _nv_block_quotient = fp8_ref.fp8_scales, fp4_ref.nv_block_quotient


def _half_away(y):
    y = np.asarray(y, np.float64)
    return np.sign(y) * np.floor(np.abs(y) + 0.5)


def _encode_ties_away(self, y):
    """Minifloat.encode with ties away from zero (the larger magnitude) instead of to even."""
    y = np.asarray(y, np.float64)
    a = np.minimum(np.abs(y), self.max)
    grid = self.values[: self.max_code + 1]
    hi = np.clip(np.searchsorted(grid, a), 1, self.max_code)
    mag = np.where(grid[hi] - a <= a - grid[hi - 1], hi, hi - 1)
    return (mag | np.where(np.signbit(y), self.sign_bit, 0)).astype(np.uint8)


def _cast_without_saturation(fmt):
    import ml_dtypes

    dt = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}[fmt]
    return lambda y: np.asarray(y, np.float64).astype(dt).view(np.uint8)


@mutant_without_vjp("quant_int8", catches=("midpoints_round_half_to_even",))
def quant_int8_round_half_away_from_zero():
    def codes(y):
        return np.clip(_half_away(y), -127, 127).astype(np.int8)
    return _patched(q8_ref, "int8_round", codes, R.quant_int8)


@mutant_without_vjp("quant_int8", catches=("forward", "grid_values_requantize_exactly"))
def quant_int8_scale_over_128():
    """amax / 128 (the full int8 range's divisor) with codes still clipped at +-127."""
    def scales(x, axis=-1):
        return (_int8_scales(x, axis).astype(np.float64) * 127 / 128).astype(np.float32)
    return _patched(q8_ref, "int8_scales", scales, R.quant_int8)


@mutant_without_vjp("quant_int8", catches=("forward", "power_of_two_scaling"))
def quant_int8_eps_added_to_amax():
    """scale = (amax + 1e-6) / 127: an epsilon against division by zero, in the wrong place."""
    def scales(x, axis=-1):
        return (_int8_scales(x, axis).astype(np.float64) + 1e-6 / 127).astype(np.float32)
    return _patched(q8_ref, "int8_scales", scales, R.quant_int8)


@mutant_without_vjp("quant_int8", catches=("forward", "axis_is_a_transpose"))
def quant_int8_always_the_last_axis():
    def fwd(x, *, axis=-1):
        codes, scales = R.quant_int8(x, axis=-1)
        return codes, (scales if axis % np.ndim(x) == np.ndim(x) - 1 else
                       np.resize(scales, np.delete(np.shape(x), axis % np.ndim(x))))
    return fwd


def _wrap(q, bits: int, signed: bool) -> np.ndarray:
    """An integer cast with no clip: the low ``bits`` bits of the rounded quotient (two's
    complement when ``signed``), as astype(int8) or a nibble mask does."""
    q = np.asarray(q, np.float64).astype(np.int64) & ((1 << bits) - 1)
    return q - (1 << bits) * (q >= 1 << (bits - 1)) if signed else q


@mutant_without_vjp("quant_int8", catches=("forward",))
def quant_int8_codes_not_clipped():
    """rint(x / scale).astype(int8) with no clip: harmless while the scale is a normal float32
    (the quotient passes 127 by a float32 rounding at most), but a subnormal scale is coarse
    and the quotient wraps (float32 [[2.31e-43]]: scale 2**-149, 165 -> -91)."""
    def codes(y):
        return _wrap(np.rint(np.asarray(y, np.float64)), 8, True).astype(np.int8)
    return _patched(q8_ref, "int8_round", codes, R.quant_int8)


@mutant_without_vjp("quant_int4", catches=("forward", "grid_values_requantize_exactly"))
def quant_int4_nibbles_swapped():
    """Element 2j in the HIGH nibble (the other packing order)."""
    def fwd(w, *, group_size=128):
        packed, scales, zeros = R.quant_int4(w, group_size=group_size)
        return ((packed << 4) | (packed >> 4)).astype(np.uint8), scales, zeros
    return fwd


@mutant_without_vjp("quant_int4", catches=("midpoints_round_half_to_even",))
def quant_int4_round_half_away_from_zero():
    def codes(y, zeros):
        return np.clip(_half_away(y) + zeros, 0, 15).astype(np.uint8)
    return _patched(q4_ref, "int4_round", codes, R.quant_int4)


@mutant_without_vjp("quant_int4", catches=("forward", "group_size_of_the_row_is_per_channel"))
def quant_int4_statistics_over_the_whole_row():
    """Every group of a row gets the row's scale and zero point."""
    def scales(w, group_size):
        n = np.shape(w)[1]
        s, lo = _int4_scales(w, n)
        return np.repeat(s, n // group_size, axis=1), np.repeat(lo, n // group_size, axis=1)
    def fwd(w, *, group_size=128):
        if np.size(w) == 0:
            return R.quant_int4(w, group_size=group_size)
        return _patched(q4_ref, "int4_scales", scales, R.quant_int4)(w, group_size=group_size)
    return fwd


@mutant_without_vjp("quant_int4", catches=("forward", "power_of_two_scaling"))
def quant_int4_eps_added_to_the_range():
    """scale = (max - min + 1e-5) / 15."""
    def scales(w, group_size):
        s, lo = _int4_scales(w, group_size)
        return (s.astype(np.float64) + 1e-5 / 15).astype(np.float32), lo
    return _patched(q4_ref, "int4_scales", scales, R.quant_int4)


@mutant_without_vjp("quant_int4", catches=("forward",))
def quant_int4_codes_not_clipped():
    """The zero point and the codes cast to a nibble with no clip (the low 4 bits), wrapping
    where a subnormal scale puts a quotient past 15 (range 16 * 2**-149: 16 -> 0)."""
    def codes(y, zeros):
        return _wrap(np.rint(np.asarray(y, np.float64)) + zeros, 4, False).astype(np.uint8)

    def zeros(zq):
        return _wrap(np.rint(zq), 4, False).astype(np.uint8)
    return _patched(q4_ref, "int4_round", codes,
                    _patched(q4_ref, "int4_zeros", zeros, R.quant_int4))


@mutant_without_vjp("quant_fp8", catches=("saturation_at_the_format_max",))
def quant_fp8_cast_without_saturation():
    """The float8 cast alone (ml_dtypes): E4M3FN 480 -> NaN, E5M2 61440 -> inf."""
    def fwd(x, scale=None, *, fmt="e4m3", granularity="tensor", pow2_scale=False):
        _, s = R.quant_fp8(x, scale, fmt=fmt, granularity=granularity, pow2_scale=pow2_scale)
        return _cast_without_saturation(fmt)(fp8_ref.fp8_quotient(x, s, granularity)), s
    return fwd


@mutant_without_vjp("quant_fp8", catches=("forward",))
def quant_fp8_dynamic_scale_without_saturation():
    """Saturation only for a static scale: a dynamic scale amax / max "cannot" overflow, so
    the plain cast is used, which a subnormal scale's coarse rounding breaks (E4M3FN 480 ->
    NaN, E5M2 61440 -> inf)."""
    def fwd(x, scale=None, *, fmt="e4m3", granularity="tensor", pow2_scale=False):
        codes, s = R.quant_fp8(x, scale, fmt=fmt, granularity=granularity,
                               pow2_scale=pow2_scale)
        if scale is not None:
            return codes, s
        return _cast_without_saturation(fmt)(fp8_ref.fp8_quotient(x, s, granularity)), s
    return fwd


@mutant_without_vjp("quant_fp8", catches=("one_tile_is_per_token_and_one_block_per_tensor",))
def quant_fp8_per_tensor_scale_for_tokens():
    def fwd(x, scale=None, *, fmt="e4m3", granularity="tensor", pow2_scale=False):
        if granularity != "token" or scale is not None:
            return R.quant_fp8(x, scale, fmt=fmt, granularity=granularity,
                               pow2_scale=pow2_scale)
        _, s = R.quant_fp8(x, fmt=fmt, granularity="tensor", pow2_scale=pow2_scale)
        return R.quant_fp8(x, np.full(np.shape(x)[:-1], s), fmt=fmt, granularity="token")
    return fwd


@mutant_without_vjp("quant_fp8", catches=("midpoints_round_half_to_even",))
def quant_fp8_ties_away_from_zero():
    return _patched(minifloat.Minifloat, "encode", _encode_ties_away, R.quant_fp8)


@mutant_without_vjp("quant_fp8", catches=("forward", "grid_values_requantize_exactly"))
def quant_fp8_e4m3_max_240():
    """E4M3's max taken as 240 (the IEEE-style E4M3 / AMD's e4m3fnuz), not E4M3FN's 448."""
    return _patched(fp8_ref, "FMT_MAX", {"e4m3": 240.0, "e5m2": 57344.0}, R.quant_fp8)


@mutant_without_vjp("quant_fp8", catches=("forward",
                                          "dequantized_values_requantize_to_the_same_codes"))
def quant_fp8_static_scale_taken_as_its_inverse():
    """A given scale multiplied in (x * scale) instead of divided out (x / scale)."""
    def fwd(x, scale=None, *, fmt="e4m3", granularity="tensor", pow2_scale=False):
        if scale is None:
            return R.quant_fp8(x, fmt=fmt, granularity=granularity, pow2_scale=pow2_scale)
        inverse = (1 / np.asarray(scale, np.float64)).astype(np.float32)
        codes, _ = R.quant_fp8(x, inverse, fmt=fmt, granularity=granularity)
        return codes, np.asarray(scale, np.float32)
    return fwd


@mutant_without_vjp("quant_fp8", catches=("power_of_two_scaling",))
def quant_fp8_eps_added_to_amax():
    def scales(x, fmt, granularity, pow2_scale):
        s = _fp8_scales(x, fmt, granularity, False).astype(np.float64)
        s = (s + 1e-6 / fp8_ref.FMT_MAX[fmt]).astype(np.float32)
        return minifloat.ceil_pow2(s).astype(np.float32) if pow2_scale else s
    return _patched(fp8_ref, "fp8_scales", scales, R.quant_fp8)


@mutant_without_vjp("quant_fp4", catches=("forward", "grid_values_requantize_exactly",
                                          "mx_scales_put_block_maxima_in_four_to_eight"))
def quant_fp4_mx_scale_from_ceil():
    """MX shared exponent from ceil(log2(amax)) instead of floor."""
    def ceil_log2(a):
        m, e = np.frexp(np.asarray(a, np.float64))
        return np.where(m == 0.5, e - 1, e)
    return _patched(fp4_ref, "floor_log2", ceil_log2, R.quant_fp4)


@mutant_without_vjp("quant_fp4", catches=("midpoints_round_half_to_even",))
def quant_fp4_ties_away_from_zero():
    return _patched(minifloat.Minifloat, "encode", _encode_ties_away, R.quant_fp4)


@mutant_without_vjp("quant_fp4", catches=("saturation",))
def quant_fp4_nvfp4_block_scale_without_saturation():
    """The E4M3 block scale by a plain cast: a block quotient above 464 becomes NaN."""
    e4m3 = SimpleNamespace(encode=_cast_without_saturation("e4m3"),
                           decode=minifloat.E4M3.decode)
    return _patched(fp4_ref, "E4M3", e4m3, R.quant_fp4)


@mutant_without_vjp("quant_fp4", catches=("forward", "power_of_two_scaling"))
def quant_fp4_nvfp4_block_scale_ignores_the_tensor_scale():
    """Block scales E4M3(amax / 6): the second-level tensor scale left out of them."""
    def quotient(x, tensor_scale):
        return _nv_block_quotient(x, 1.0)
    return _patched(fp4_ref, "nv_block_quotient", quotient, R.quant_fp4)


# ----------------------------------------------------------------------------- quantization (Q2)

gptq_ref = importlib.import_module("lmspec.reference.gptq")
awq_ref = importlib.import_module("lmspec.reference.awq")
kv_ref = importlib.import_module("lmspec.reference.quant_kv_cache")


@mutant("quant_matmul", catches=("forward", "int4_equals_int8_on_shifted_codes"))
def quant_matmul_nibbles_swapped():
    """Element 2j read from the HIGH nibble and 2j + 1 from the low one."""
    def fwd(x, packed, scales, zeros=None, *, bits=4, group_size=128, mode="weight_only"):
        _spec("quant_matmul").check_args(x, packed, scales, zeros, bits=bits,
                                         group_size=group_size, mode=mode)
        if bits == 4:
            p = np.asarray(packed).astype(np.uint8)
            packed = ((p >> 4) | (p << 4)).astype(np.uint8)
        return R.quant_matmul(x, packed, scales, zeros, bits=bits, group_size=group_size,
                              mode=mode)
    return fwd, None


@mutant("quant_matmul", catches=("forward", "equal_group_scales_equal_per_channel"))
def quant_matmul_per_channel_zero_point_8():
    """One group per row taken as symmetric int4 (zero point 8, the GPTQ sym convention)."""
    def fwd(x, packed, scales, zeros=None, *, bits=4, group_size=128, mode="weight_only"):
        if bits == 4 and np.shape(scales)[1] == 1:
            zeros = np.full(np.shape(zeros), 8, np.uint8)
        return R.quant_matmul(x, packed, scales, zeros, bits=bits, group_size=group_size,
                              mode=mode)
    return fwd, None


@mutant("quant_matmul", catches=("forward",))
def quant_matmul_w8a8_activation_scale_per_tensor():
    """W8A8 with one activation scale for the whole batch instead of one per token."""
    mm_ref = importlib.import_module("lmspec.reference.quant_matmul")
    original = mm_ref.quant_int8

    def per_tensor(x, *, axis=-1):
        codes, s = original(np.asarray(x).reshape(1, -1), axis=-1)
        top = np.float32(s[0])
        return np.clip(np.rint(np.asarray(x, np.float64) / top), -127, 127).astype(np.int8), \
            np.full(np.shape(x)[0], top, np.float32)
    return _patched(mm_ref, "quant_int8", per_tensor, R.quant_matmul), None


@mutant_without_vjp("gptq", catches=("forward",))
def gptq_without_error_feedback():
    """U's off-diagonal dropped: every column rounded on its own (RTN on GPTQ's groups)."""
    original = gptq_ref.inverse_cholesky

    def diagonal_only(h, damp):
        return np.diag(np.diag(original(h, damp)))
    return _patched(gptq_ref, "inverse_cholesky", diagonal_only, R.gptq)


@mutant_without_vjp("gptq", catches=("forward", "one_group_static_or_not"))
def gptq_dynamic_groups_read_the_input_weight():
    """Dynamic group grids from the weight as given: before dead inputs are zeroed and before
    any error feedback (static groups are right)."""
    original = gptq_ref.group_params

    def fwd(w, x, *, group_size=128, **kw):
        if kw.get("static_groups"):
            return R.gptq(w, x, group_size=group_size, **kw)
        w0, groups = np.asarray(w, np.float64), iter(range(np.shape(w)[1]))

        def stale(wg):
            g = next(groups)
            return original(w0[:, g * group_size:(g + 1) * group_size])
        return _patched(gptq_ref, "group_params", stale, R.gptq)(
            w, x, group_size=group_size, **kw)
    return fwd


@mutant_without_vjp("gptq", catches=("forward",))
def gptq_act_order_permutation_not_undone():
    """Codes returned in processing (descending diag(H)) order."""
    def fwd(w, x, **kw):
        q, scales, zeros, perm = R.gptq(w, x, **kw)
        return q[:, perm], scales, zeros, perm
    return fwd


@mutant_without_vjp("gptq", catches=("forward", "act_order_permutation_round_trips"))
def gptq_act_order_ascending():
    """act-order by ascending diag(H): the least important columns first."""
    def ascending(h):
        return np.argsort(np.diag(h), kind="stable")
    return _patched(gptq_ref, "act_order_perm", ascending, R.gptq)


@mutant_without_vjp("awq", catches=("forward", "one_grid_point_is_rtn"))
def awq_grid_excludes_zero():
    """The grid (t + 1) / n_grid: (0, 1] instead of [0, 1), so alpha = 0 (RTN) is never tried."""
    original = awq_ref.candidate_scales

    def fwd(w, x, *, group_size=128, n_grid=20):
        def shifted(x, alpha):
            return original(x, alpha + 1.0 / n_grid)
        return _patched(awq_ref, "candidate_scales", shifted, R.awq)(
            w, x, group_size=group_size, n_grid=n_grid)
    return fwd


@mutant_without_vjp("awq", catches=("forward", "no_worse_than_rtn"))
def awq_scales_not_folded_back():
    """The search scores Q(w s) against w without dividing s back out (x / s forgotten)."""
    original = awq_ref.fake_quant

    def unfolded(w, s, group_size):
        q, scales, zeros, w_hat = original(w, s, group_size)
        return q, scales, zeros, w_hat * np.asarray(s, np.float64)
    return _patched(awq_ref, "fake_quant", unfolded, R.awq)


@mutant_without_vjp("quant_kv_cache",
                    catches=("forward", "per_token_scales_are_not_per_tensor"))
def quant_kv_cache_scale_per_tensor():
    """One scale for the whole K (and V) tensor instead of one per (token, head)."""
    original = kv_ref.kv_quotients

    def per_tensor(x, fmt):
        y, s = original(x, fmt)
        top = np.float32(s.max(initial=1.0))
        return np.asarray(x, np.float64) / np.float64(top), np.full_like(s, top)
    return _patched(kv_ref, "kv_quotients", per_tensor, R.quant_kv_cache)


@mutant_without_vjp("quant_kv_cache", catches=("subnormal_row_scales_clip_the_codes",))
def quant_kv_cache_codes_not_clipped():
    """The cache codes cast with no clip: int8 wraps (165 -> -91), float8 casts without
    saturation (NaN, inf), wherever a row's subnormal scale puts a quotient past the max."""
    def encode(y, fmt):
        if fmt == "int8":
            return _wrap(np.rint(np.asarray(y, np.float64)), 8, True).astype(np.int8)
        return _cast_without_saturation(fmt)(y)
    return _patched(kv_ref, "encode", encode, R.quant_kv_cache)


# ----------------------------------------------------------------------------- plants for the
# properties no earlier plant made fail (each names its property). A plant whose property
# compares with another component carries that component healthy (the reference in float32).


def partner(stem: str):
    """Give a plant's backend the healthy float32 reference ``stem`` (above ``@mutant``): for a
    property that compares the planted component with another one."""
    def add(ns):
        setattr(ns, stem, ref_backend._in_input_dtype(getattr(R, stem)))
        return ns
    return add


def _fake_quant_per_tensor(x, encode, decode, top: float):
    """x through a quantizer with ONE scale amax(|x|) / top for the whole tensor."""
    x = _f32(x)
    amax = np.float32(np.abs(x).max(initial=0.0))
    if amax == 0:
        return x
    scale = amax / np.float32(top)
    return (decode(encode(x / scale)) * scale).astype(np.float32)


@mutant("swiglu", catches=("rows_are_independent",))
def swiglu_fp8_activation_scale_per_tensor():
    """FP8 (E4M3) activations with one dynamic scale for the whole batch, not one per token:
    a row's result depends on the other rows' amax."""
    def fwd(x, w_gate, w_up, w_down):
        _spec("swiglu").check_args(x, w_gate, w_up, w_down)
        xq = _fake_quant_per_tensor(x, minifloat.E4M3.encode, minifloat.E4M3.decode, 448.0)
        return R.swiglu(xq, w_gate, w_up, w_down)
    return fwd, None


@mutant("geglu", catches=("rows_are_independent",))
def geglu_int8_activation_scale_per_tensor():
    """W8A8 with one int8 activation scale for the whole batch instead of one per token."""
    def fwd(x, w_gate, w_up, w_down, *, approximate="tanh"):
        _spec("geglu").check_args(x, w_gate, w_up, w_down, approximate=approximate)
        xq = _fake_quant_per_tensor(x, lambda y: np.clip(np.rint(y), -127, 127),
                                    lambda q: q, 127.0)
        return R.geglu(xq, w_gate, w_up, w_down, approximate=approximate)
    return fwd, None


@mutant("log_softmax", catches=("shift_invariance",))
def log_softmax_without_max_subtraction():
    """x - log(sum(exp(x))): the same algebra, but exp overflows once a logit passes ~88."""
    def fwd(x, *, axis=-1):
        _spec("log_softmax").check_args(x, axis=axis)
        x = _f32(x)
        with np.errstate(over="ignore", divide="ignore"):
            return (x - np.log(np.exp(x).sum(axis=axis, keepdims=True))).astype(np.float32)
    return fwd, None


@partner("log_softmax")
@mutant("softmax", catches=("exp_log_softmax_is_softmax",))
def softmax_online_without_rescale():
    """Online softmax (one pass, element by element, Milakov & Gimelshein 2018) whose running
    sum is not rescaled by exp(m_old - m_new) when a later element raises the running max."""
    def fwd(x, *, axis=-1):
        _spec("softmax").check_args(x, axis=axis)
        x = np.moveaxis(_f32(x), axis, -1)
        m = np.full(x.shape[:-1] + (1,), -np.inf, np.float32)
        d = np.zeros(x.shape[:-1] + (1,), np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            for i in range(x.shape[-1]):
                m = np.maximum(m, x[..., i:i + 1])
                d = d + np.exp(x[..., i:i + 1] - m)  # missing: d * exp(m_old - m)
            y = np.exp(x - m) / d
        return np.moveaxis(y, -1, axis).astype(np.float32)
    return fwd, None


@partner("linear_attention")
@mutant("lightning_attention", catches=("equals_linear_attention_with_the_identity_map",))
def lightning_attention_ignores_scale():
    """A port of MiniMax-01's kernel, which applies no softmax scale: ``scale`` dropped."""
    def fwd(q, k, v, log_decay=None, initial_state=None, *, block_size=16, scale=None):
        _spec("lightning_attention").check_args(q, k, v, log_decay, initial_state,
                                                block_size=block_size, scale=scale)
        return R.lightning_attention(q, k, v, log_decay, initial_state, block_size=block_size)
    return fwd, None


@mutant("lightning_attention", catches=("every_block_size_agrees",))
def lightning_attention_tail_block_zero_padded():
    """The last, shorter block loaded zero-padded to block_size and processed as a full one:
    its outputs are right, but the carried state is decayed by gamma^B instead of gamma^L."""
    def fwd(q, k, v, log_decay=None, initial_state=None, *, block_size=16, scale=None):
        _spec("lightning_attention").check_args(q, k, v, log_decay, initial_state,
                                                block_size=block_size, scale=scale)
        t = np.shape(q)[1]
        pad = -t % int(block_size) if t else 0
        wide = [np.pad(_f32(a), ((0, 0), (0, pad), (0, 0), (0, 0))) for a in (q, k, v)]
        out, state = R.lightning_attention(*wide, log_decay, initial_state,
                                           block_size=block_size, scale=scale)
        return out[:, :t], state
    return fwd, None


@mutant("mla", catches=("causal_ignores_the_future",))
def mla_absorbed_path_without_causal_mask():
    """The absorbed (decode) path written for one query token, where the mask is a no-op, and
    used for a multi-token prefill: no causal mask there."""
    def fwd(*args, form="naive", causal=True, **kw):
        return R.mla(*args, form=form, causal=causal and form != "absorbed", **kw)
    return fwd, None


@mutant("moe_router", catches=("zero_bias_is_no_bias",))
def moe_router_groups_only_with_a_bias():
    """Group-limited routing run only on the bias-corrected (DeepSeek-V3 noaux_tc) path: with
    no bias the plain top-k over all experts, n_group and topk_group ignored."""
    def fwd(logits, bias=None, **kw):
        _spec("moe_router").check_args(logits, bias, **kw)
        if bias is None:
            kw = dict(kw, n_group=1, topk_group=1)
        return R.moe_router(logits, bias, **kw)
    return fwd, None


@mutant("moe_router", catches=("group_limited_routing_uses_at_most_topk_group_groups",
                               "permuting_experts_permutes_ids_only"))
def moe_router_group_mask_tiled():
    """The (N, G) kept-group mask expanded to experts with np.tile (expert e in group e % G)
    instead of np.repeat (groups are blocks of E / G consecutive experts)."""
    def masked(u, *, n_group, topk_group, masked_group_fill):
        if n_group == 1:
            return _f32(u)
        keep = np.tile(router_ref.kept_groups(u, n_group, topk_group), u.shape[1] // n_group)
        fill = np.float32(0.0 if masked_group_fill == "zero" else -np.inf)
        return np.where(keep, _f32(u), fill).astype(np.float32)
    return _patched(router_ref, "masked_selection", masked, R.moe_router), None


@mutant("moe_balance_loss", catches=("token_order_within_a_sequence_does_not_matter",))
def moe_balance_loss_sequence_first_layout():
    """Tokens laid out sequence-first (T, B), as Megatron does, read as batch-first (B, T):
    "sequence" b is every n_seq-th token from b."""
    def fwd(scores, topk_ids, *, kind, n_seq=1, alpha=1.0):
        R.moe_balance_loss(scores, topk_ids, kind=kind, n_seq=n_seq, alpha=alpha)  # the checks
        n = np.shape(scores)[0]
        if kind != "seq" or n == 0:
            return R.moe_balance_loss(scores, topk_ids, kind=kind, n_seq=n_seq, alpha=alpha)
        order = np.arange(n).reshape(n // n_seq, n_seq).T.reshape(-1)
        return R.moe_balance_loss(np.asarray(scores)[order], np.asarray(topk_ids)[order],
                                  kind=kind, n_seq=n_seq, alpha=alpha)
    return fwd, None


@mutant("moe_balance_loss", catches=("slot_order_does_not_matter",))
def moe_balance_loss_counts_the_first_slot_only():
    """f_i counted from each token's first slot (the Switch Transformer's top-1 argmax) for a
    top-k router."""
    def fwd(scores, topk_ids, *, kind, n_seq=1, alpha=1.0):
        R.moe_balance_loss(scores, topk_ids, kind=kind, n_seq=n_seq, alpha=alpha)  # the checks
        ids = topk_ids if topk_ids is None or kind == "z" else np.asarray(topk_ids)[:, :1]
        return R.moe_balance_loss(scores, ids, kind=kind, n_seq=n_seq, alpha=alpha)
    return fwd, None


# ----------------------------------------------------------------------------- alignment losses
kto_ref = importlib.import_module("lmspec.reference.kto_loss")


@mutant("sequence_logprob", catches=("forward", "masked_positions_do_not_matter"))
def sequence_logprob_sums_prompt_tokens():
    """The DPO bug: the prompt's (and padding's) token log-probs summed with the response's."""
    def fwd(logits, targets, mask):
        every = np.clip(np.asarray(targets), 0, logits.shape[-1] - 1)
        logps, _ = R.sequence_logprob(logits, every, np.ones_like(np.asarray(mask)))
        return logps, R.sequence_logprob(logits, targets, mask)[1]
    return fwd, None


@mutant("preference_loss", catches=("forward",))
def preference_loss_beta_on_the_chosen_side_only():
    """beta (pc - rc) - (pr - rr): beta applied to one log-ratio only."""
    def fwd(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta=0.1, **kw):
        b = np.float32(beta)
        loss = R.preference_loss(policy_chosen, policy_rejected / b, ref_chosen,
                                 ref_rejected / b, beta=beta, **kw)[0]
        _, cr, rr = R.preference_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                      beta=beta, **kw)
        return loss, cr, rr
    return fwd, None


@mutant("preference_loss", catches=("forward", "swapping_chosen_and_rejected"))
def preference_loss_margin_sign_swapped():
    """h = rejected log-ratio - chosen log-ratio: the loss pushes the wrong way."""
    def fwd(policy_chosen, policy_rejected, ref_chosen, ref_rejected, **kw):
        _spec("preference_loss").check_args(policy_chosen, policy_rejected, ref_chosen,
                                            ref_rejected, **kw)
        loss = R.preference_loss(policy_rejected, policy_chosen, ref_rejected, ref_chosen, **kw)[0]
        _, cr, rr = R.preference_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                      **kw)
        return loss, cr, rr
    return fwd, None


@mutant("preference_loss", catches=("forward", "swapping_chosen_and_rejected"))
def preference_loss_robust_without_normalization():
    """Robust DPO without its 1 / (1 - 2 eps): no longer an unbiased estimate."""
    def fwd(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta=0.1,
            loss_type="sigmoid", label_smoothing=0.0):
        out = R.preference_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
        if loss_type != "robust":
            return out
        return (out[0] * np.float32(1 - 2 * label_smoothing)).astype(np.float32), *out[1:]
    return fwd, None


@mutant("kto_loss", catches=("backward",))
def kto_loss_baseline_not_detached():
    """The gradient flows through z0 = max(mean(policy_kl - ref_kl), 0) into policy_kl_logps."""
    def vjp(cots, policy_logps, ref_logps, desirable, policy_kl_logps, ref_kl_logps, **kw):
        grads = R.kto_loss_vjp(cots, policy_logps, ref_logps, desirable, policy_kl_logps,
                               ref_kl_logps, **kw)
        live = np.mean(_f32(policy_kl_logps) - _f32(ref_kl_logps)) > 0  # the clamp's branch
        m = len(policy_kl_logps)
        dkl = np.full(m, -grads["policy_logps"].sum() / m if live else 0.0, np.float32)
        return dict(grads, policy_kl_logps=dkl)
    return None, vjp


@mutant("kto_loss", catches=("forward", "negative_kl_estimate_is_clamped_to_zero"))
def kto_loss_baseline_not_clamped():
    """z0 = mean(policy_kl - ref_kl) without max(., 0): a negative estimate shifts every loss."""
    def unclamped(policy_kl_logps, ref_kl_logps):
        return np.float32(np.mean(_f32(policy_kl_logps) - _f32(ref_kl_logps)))
    return _patched(kto_ref, "_baseline", unclamped, R.kto_loss), None


@mutant("reward_model_loss", catches=("forward",))
def reward_model_loss_margin_added():
    """-log sigmoid(chosen - rejected + margin): the margin's sign wrong."""
    def fwd(chosen, rejected, margin=None, **kw):
        return R.reward_model_loss(chosen, rejected, None if margin is None else -margin, **kw)
    return fwd, None


# ----------------------------------------------------------------------------- grpo_loss, gae
grpo_ref = importlib.import_module("lmspec.reference.grpo_loss")


@mutant("grpo_loss", catches=("forward",))
def grpo_loss_kl_sign_swapped():
    """k3 with the log-ratio the wrong way round, exp(logp - ref) - (logp - ref) - 1: still
    >= 0 and 0 at the reference, but an estimate of KL(ref || pi) on samples of pi."""
    def fwd(logp, old_logp, ref_logp, rewards, mask, *, beta=0.0, **kw):
        _spec("grpo_loss").check_args(logp, old_logp, ref_logp, rewards, mask, beta=beta, **kw)
        loss, adv = R.grpo_loss(logp, old_logp, ref_logp, rewards, mask, beta=0.0, **kw)
        d = _f32(logp) - _f32(ref_logp)
        w = grpo_ref._weights(mask, kw.get("loss_type", "grpo"),
                              kw.get("max_completion_length"))
        k3 = np.exp(d) - d - np.float32(1.0)
        return (loss + np.float32(beta) * (k3 * w).sum()).astype(np.float32), adv
    return fwd, None


@mutant("grpo_loss", catches=("forward",))
def grpo_loss_per_sequence_when_per_token_asked():
    """loss_type="bnpo" (DAPO's token-level mean) reduced as "grpo" (per-sequence means)."""
    def fwd(*args, loss_type="grpo", **kw):
        return R.grpo_loss(*args, loss_type="grpo" if loss_type == "bnpo" else loss_type, **kw)
    return fwd, None


@mutant("grpo_loss", catches=("forward",))
def grpo_loss_advantages_not_std_normalized():
    def fwd(*args, scale_rewards=True, **kw):
        return R.grpo_loss(*args, scale_rewards=False, **kw)
    return fwd, None


@mutant("grpo_loss", catches=("forward",))
def grpo_loss_clip_uses_eps_high_on_both_sides():
    """clip(ratio, 1 - eps_high, 1 + eps_high): DAPO's clip-higher widened on the low side too."""
    def fwd(*args, epsilon=0.2, epsilon_high=None, **kw):
        hi = epsilon if epsilon_high is None else epsilon_high
        return R.grpo_loss(*args, epsilon=min(hi, 0.99), epsilon_high=hi, **kw)
    return fwd, None


@mutant("grpo_loss", catches=("backward",))
def grpo_loss_backward_ignores_clipping():
    """The gradient of the unclipped surrogate everywhere: clipped tokens still pushed."""
    return None, lambda *args, **kw: _grpo_vjp_unclipped(*args, **kw)


def _grpo_vjp_unclipped(cts, logp, old_logp, ref_logp, rewards, mask, *, group_size,
                        epsilon=0.2, epsilon_high=None, beta=0.0, scale_rewards=True,
                        loss_type="grpo", max_completion_length=None):
    dloss = cts[0] if isinstance(cts, tuple) else cts
    adv = grpo_ref.advantages_of(rewards, group_size, scale_rewards)
    ratio = np.exp(_f32(logp) - _f32(old_logp))
    w = grpo_ref._weights(mask, loss_type, max_completion_length)
    g = (-ratio * adv[:, None] + np.float32(beta) * (1 - np.exp(_f32(ref_logp) - _f32(logp))))
    return {"logp": (g * w * np.float32(dloss)).astype(np.float32)}


@mutant_without_vjp("gae", catches=("forward",))
def gae_lambda_applied_twice():
    """A_t = delta_t + gamma lam^2 A_{t+1}: lambda folded into the carry and applied again."""
    def fwd(rewards, values, mask, *, gamma=1.0, lam=0.95):
        _spec("gae").check_args(rewards, values, mask, gamma=gamma, lam=lam)
        return R.gae(rewards, values, mask, gamma=gamma, lam=lam * lam)
    return fwd


ppo_ref = importlib.import_module("lmspec.reference.ppo_loss")


def _ppo_patched_max(pg_max=np.maximum, vf_max=np.maximum):
    """The reference ppo_loss with the policy or the value reduction's max replaced."""
    def fwd(logp, old_logp, advantages, values, old_values, returns, mask, *, clip_range=0.2,
            clip_range_value=0.2, vf_coef=0.1):
        _spec("ppo_loss").check_args(logp, old_logp, advantages, values, old_values, returns,
                                     mask, clip_range=clip_range,
                                     clip_range_value=clip_range_value, vf_coef=vf_coef)
        _spec("ppo_loss").check_mask(np.asarray(mask))
        _, _, pg1, pg2, _, sq1, sq2 = ppo_ref._parts(logp, old_logp, advantages, values,
                                                     old_values, returns, clip_range,
                                                     clip_range_value)
        w = ppo_ref._weight(mask)
        pg = np.float32((pg_max(pg1, pg2) * w).sum())
        vf = np.float32(0.5 * (vf_max(sq1, sq2) * w).sum())
        return np.float32(pg + np.float32(vf_coef) * vf), pg, vf
    return fwd


@mutant("ppo_loss", catches=("forward",))
def ppo_loss_optimistic_policy_min():
    """min(-A r, -A clip(r)): the optimistic bound instead of PPO's pessimistic max."""
    return _ppo_patched_max(pg_max=np.minimum), None


@mutant("ppo_loss", catches=("forward",))
def ppo_loss_value_clip_takes_the_min():
    """min((v - R)^2, (v_clip - R)^2): value clipping that lowers the value loss."""
    return _ppo_patched_max(vf_max=np.minimum), None


@mutant("ppo_loss", catches=("forward",))
def ppo_loss_mean_over_padding():
    """The masked mean taken over every position, padding included (mask applied to the sum
    only): sum(m x) / (B T)."""
    def fwd(logp, old_logp, advantages, values, old_values, returns, mask, **kw):
        outs = R.ppo_loss(logp, old_logp, advantages, values, old_values, returns, mask, **kw)
        m = np.asarray(mask)
        k = np.float32(max(m.sum(), 1) / max(m.size, 1))
        return tuple(np.float32(o * k) for o in outs)
    return fwd, None


@mutant("ppo_loss", catches=("backward",))
def ppo_loss_backward_ignores_value_clipping():
    """d vf / d values = (v - R) everywhere: clipped values still get the gradient."""
    def vjp(cts, logp, old_logp, advantages, values, old_values, returns, mask, **kw):
        grads = R.ppo_loss_vjp(cts, logp, old_logp, advantages, values, old_values, returns,
                               mask, **kw)
        free = R.ppo_loss_vjp(cts, logp, old_logp, advantages, values, old_values, returns,
                              mask, **dict(kw, clip_range_value=1e6))
        return dict(grads, values=free["values"])
    return None, vjp


# Whole-model plants live in their own file (patches of the reference model module).
import _model_mutants  # noqa: E402  (tests/harness is on the path wherever mutants is)

_model_mutants.register(MUTANTS, MUST_CATCH)
globals().update({name: MUTANTS[name][1] for name in _model_mutants.PLANTS})

# Training-step plants: patches of the reference step's optimizer, schedule and accumulation.
import _train_mutants  # noqa: E402

_train_mutants.register(MUTANTS, MUST_CATCH)
globals().update({name: MUTANTS[name][1] for name in _train_mutants.PLANTS})

# Rejection-sampler plants: the reference sampler with a patched helper or a wrong input/output.
import _spec_mutants  # noqa: E402

_spec_mutants.register(MUTANTS, MUST_CATCH)
globals().update({name: MUTANTS[name][1] for name in _spec_mutants.PLANTS})
