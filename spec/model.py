"""Whole decoder-only models: one code path for Llama 3 / Mistral / Qwen2/3 (dense GQA),
Mixtral / Qwen3-MoE (softmax-routed MoE), DeepSeek-V3 (MLA + sigmoid group-limited MoE with
shared experts and the selection bias) and MiniMax-01 (lightning / softmax hybrid).

The configuration, parameter names, initialization and size arithmetic live in
``spec/_model_config.py`` and are re-exported here.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import (
    Case,
    Component,
    ErrorCase,
    host,
    is_integer_array,
    require,
    shape_of,
)
from lmspec.spec._model_config import (
    IGNORE_INDEX,
    PRESETS,
    HybridConfig,
    MLAConfig,
    ModelConfig,
    MoEConfig,
    active_params_per_token,
    init_params,
    kv_cache_bytes_per_token,
    lightning_log_decay,
    n_params,
    param_kind,
    param_shapes,
    preset,
    trainable,
)
from lmspec.spec._sharding import tensor_parallel_dim
from lmspec.spec.rope import scalings

__all__ = [
    "IGNORE_INDEX", "PRESETS", "COMPONENT", "HybridConfig", "MLAConfig", "ModelConfig",
    "MoEConfig", "active_params_per_token", "cache_shapes", "check_args", "check_weights",
    "default_positions",
    "init_params", "kv_cache_bytes_per_token", "lightning_log_decay", "model", "model_configs",
    "model_grad", "model_loss", "n_params", "param_kind", "param_shapes", "preset",
    "tensor_parallel_dim", "trainable",
]


def model(params, tokens, positions=None, segment_ids=None, caches=None, *,
          config: ModelConfig, use_cache: bool = False):
    """Logits of a decoder over T new tokens; returns ``(logits, caches)``.

    Inputs: ``params`` a mapping ``name -> array`` with exactly the names and shapes of
    ``param_shapes(config)`` (in one float dtype, the compute dtype; buffers may be wider);
    ``tokens`` (B, T) integer in [0, V); ``positions`` (B, T) integer >= 0 or None;
    ``segment_ids`` (B, T) integer or None (packed documents: attention never crosses a
    segment; padding is a segment of its own whose targets are ignored); ``caches`` None or
    one mapping per layer, as returned by an earlier call with ``use_cache=True``.
    Output: ``logits`` (B, T, V) in the compute dtype; ``caches`` (None unless ``use_cache``
    or ``caches`` is given) the per-layer caches extended by the T tokens.

    Positions default to ``Tc + arange(T)`` (Tc the cached length), or, with segment ids, to
    each token's index within its run of equal segment ids (a packed document starts at 0).

    Parameter naming (weights ``(in, out)``, HF's ``nn.Linear.weight`` transposed)::

        embed (V, D)                         layers.{i}.attn_norm (D,)
        layers.{i}.attn.wq (D, H hd)  .wk .wv (D, Hkv hd)  .wo (H hd, D)
                        .bq .bk .bv (attention_bias)  .q_norm .k_norm (hd,) (qk_norm)
        MLA:  layers.{i}.attn.w_dq .q_norm (q_lora_rank) .w_uq .w_dkv .kv_norm .w_ukv .wo
        lightning:  layers.{i}.attn.wq .wk .wv .w_gate (D, H hd)  .out_norm (H hd,)  .wo
        layers.{i}.ffn_norm (D,)
        dense FFN:  layers.{i}.ffn.w_gate .w_up (D, F)  .w_down (F, D)
        MoE:  layers.{i}.moe.router (D, E)  .router_bias (E,) (buffer)  .w_gate .w_up
              (E, D, Fe)  .w_down (E, Fe, D)  .shared.w_gate .shared.w_up .shared.w_down
              .shared_gate (D, 1)
        final_norm (D,)                      lm_head (D, V) (absent when tie_embeddings)
        MTP (mtp_depth > 0), j < mtp_depth:  mtp.{j}.enorm .hnorm (D,)  .eh_proj (2D, D)
              .attn_norm .attn.* .ffn_norm .ffn.* | .moe.*  (block = layer n_layers + j)
              .final_norm (D,)

    Math, with ``rms(x, w) = rms_norm(x, w, eps=norm_eps)`` and every product in the compute
    dtype (accumulating in float32 or wider)::

        x   = embed[tokens]                                        (B, T, D) residual stream
        per layer i:
          h = rms(x, attn_norm);  x = x + mixer_i(h)
          h = rms(x, ffn_norm);   x = x + ffn_i(h)
        logits = rms(x, final_norm) @ (lm_head, or embed^T when tied)

    Softmax mixer (GQA/MQA/MHA): ``q = h wq (+ bq)`` as (B, T, H, hd), ``k, v = h wk (+ bk),
    h wv (+ bv)`` as (B, T, Hkv, hd); with ``qk_norm`` (Qwen3) ``q = rms(q, q_norm)``,
    ``k = rms(k, k_norm)`` per head *before* RoPE; ``q, k = rope(q), rope(k)`` (theta,
    rotary_dim, interleaved, scaling as configured); ``o = sdpa(q, [k_cache; k], [v_cache;
    v], causal=True, window=window(i), segments)`` with scale ``1/sqrt(hd)``; mixer out =
    ``o.reshape(B, T, H hd) wo``. ``window(i)`` is ``sliding_window`` on the layers in
    ``sliding_layers`` (all layers when None; Mistral), else full. The cache holds the
    *rotated* k and v of every earlier token from position 0.

    MLA mixer: ``mla(h, positions, ...)`` of ``spec/mla.py`` with the layer's weights,
    ``theta``, ``scaling``, ``interleaved = rope_interleaved``, ``eps = norm_eps``,
    ``mscale_all_dim`` and ``form`` of ``config.mla``; the cache is its (c_kv, k_rope).

    Lightning mixer (MiniMax-01): ``q, k, v = silu(h wq), silu(h wk), silu(h wv)`` as
    (B, T, H, hd); ``o = lightning_attention(q, k, v, lightning_log_decay(config, i),
    state, block_size)`` (scale 1); ``o = rms(o.reshape(B, T, H hd), out_norm) *
    sigmoid(h w_gate)``; mixer out = ``o wo``. The cache is the (B, H, hd, hd) state.
    Segment ids are rejected on a model with lightning layers (its recurrence crosses
    documents) and, for now, on MLA models (the mla component takes no segment mask).

    FFN: dense ``swiglu(h, w_gate, w_up, w_down)``; MoE: ``logits_r = h2 router`` (h2 the
    (B T, D) rows), ``ids, w, scores = moe_router(logits_r, router_bias, ...)`` (top_k,
    score_func, norm_topk_prob, groups, fill, scaling of ``config.moe``), ``y, kept =
    moe_layer(h2, ids, w, experts..., shared..., capacity_factor)``. Gradients reach the
    router through the weights w (and the balance loss through scores); the selection is
    discrete. Capacity counts all B T tokens of the call.

    Rejected (ValueError naming the argument unless said): a parameter missing, extra or of
    the wrong shape (named); tokens not a (B, T) integer array (TypeError for floats); a token
    outside [0, V) (IndexError naming ``tokens``); positions or segment ids not (B, T)
    integer; segment ids together with caches, or on a model with lightning or MLA layers; caches
    of the wrong number of layers.
    """
    check_args(params, tokens, positions, segment_ids, caches, config=config)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def model_loss(params, tokens, targets, positions=None, segment_ids=None, *,
               config: ModelConfig, n_tokens: int | None = None, weights=None):
    """The training loss; returns ``(loss, metrics)``.

    ``targets`` (B, T) integer: the next token of each position, or ``IGNORE_INDEX`` (-100).
    With n = ``n_tokens`` (default: the number of non-ignored targets; a gradient
    accumulation loop passes the count of the whole accumulated batch so that the sum of the
    micro-batch losses is the loss of the whole batch) and logits from ``model``::

        ce      = sum_{valid i} w_i (lse_i - logits_i[t_i] + z_loss * lse_i**2) / max(n, 1)
        balance = sum over MoE layers of moe.balance_coef
                  * moe_balance_loss(scores, ids, kind=moe.balance_loss, n_seq=B)
                  + moe.router_z_coef * moe_balance_loss(logits_r, None, kind="z")
        mtp     = mtp_loss_weight / mtp_depth * sum_k sum_{valid i} ce^k_i / max(n, 1)
        loss    = ce + balance + mtp

    (the balance terms count every token of the call, padding included; the cross-entropy
    term is ``cross_entropy``'s, times n_valid / n, when unweighted). ``weights``: None (every
    w_i = 1, bit-identical to the unweighted loss) or a real float (B, T) array of per-target
    weights, any sign (an alignment loss L of the targets' log-probabilities has gradient
    sum_i (dL/dlogp_i) dlogp_i/dtheta, i.e. this ce's with w_i = -dL/dlogp_i); weights never
    change n, and the MTP and balance terms stay unweighted. metrics["ce"] is the weighted
    term. Rejected: weights of another shape or non-finite (ValueError naming ``weights``),
    integer or bool (TypeError). ``loss`` is a 0-d float in float32 or
    wider; ``metrics`` maps "ce", "balance", "mtp" (floats), "n_tokens" (int, the valid count)
    and "loads" ((n_moe_layers, E) integer assignments per expert, the input of
    ``moe_bias_update``; the main stack's MoE layers, then the MTP modules').

    Multi-token prediction (DeepSeek-V3, section 2.2), modules k = 1 .. mtp_depth (names
    ``mtp.{k-1}.``), h^0 the main stack's last hidden state (before ``final_norm``)::

        h^k = block_{L+k-1}([rms(embed[t_{i+k}], enorm), rms(h^{k-1}_i, hnorm)] eh_proj)
        logits^k = rms(h^k, mtp.{k-1}.final_norm) head        (the shared head)

    (embedding first, as in DeepSeek-V3's released inference code and vLLM's deepseek_mtp,
    whose ``eh_proj`` weights read it in that order; the paper's formula writes h first),
    the block a softmax-attention layer (MLA or GQA as the model's; MoE if the model has
    MoE), causal, on the same positions and segment ids; t_{i+k} = tokens[i + k] (token 0
    past the end, where nothing is predicted). Module k predicts targets[i + k]
    (``reference.model.mtp_targets``), ignored past the end and where position i + k lies in
    another document. Each module's CE is summed over its targets and divided by the main
    term's n, not by its own count: with gradient accumulation the sum of micro-batch
    losses stays the whole batch's loss (DeepSeek-V3 averages over the module's own
    predictions; the two differ by the k positions per sequence that have none). ``model``
    does not run the MTP modules.
    """
    check_args(params, tokens, None, segment_ids, None, config=config, weights=weights)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def model_grad(params, tokens, targets, positions=None, segment_ids=None, *,
               config: ModelConfig, n_tokens: int | None = None, weights=None):
    """``model_loss`` and its gradient; returns ``(loss, metrics, grads)``, ``grads`` a
    mapping over ``trainable(config)`` (every parameter but buffers), each of its parameter's
    shape and dtype (in the reference: float64, by the components' hand-written VJPs);
    ``weights`` as in ``model_loss``."""
    check_args(params, tokens, None, segment_ids, None, config=config, weights=weights)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


# ----------------------------------------------------------------------------- checks


def cache_shapes(config: ModelConfig, batch: int, length: int) -> list[dict[str, tuple]]:
    """The shape of each layer's cache holding ``length`` tokens."""
    c, out = config, []
    for kind in c.layer_kinds():
        if kind == "linear":
            out.append({"state": (batch, c.n_heads, c.hd, c.hd)})
        elif c.mla is not None:
            out.append({"c_kv": (batch, length, c.mla.kv_lora_rank),
                        "k_rope": (batch, length, c.mla.qk_rope_head_dim)})
        else:
            out.append({"k": (batch, length, c.kv_heads, c.hd),
                        "v": (batch, length, c.kv_heads, c.hd)})
    return out


def cached_length(caches) -> int:
    for layer in caches or ():
        for name in ("k", "c_kv"):
            if name in layer:
                return int(shape_of(layer[name])[1])
    return 0


def check_weights(weights, shape: tuple, name: str = "weights") -> None:
    """Per-target loss weights: None, or a finite real float array of the targets' shape."""
    if weights is None:
        return
    got = shape_of(weights)
    require(got == tuple(shape), ValueError, f"{name}: expected shape {tuple(shape)}, got {got}")
    w = host(weights)
    require(not is_integer_array(weights) and w.dtype.kind == "f", TypeError,
            f"{name}: expected a real float array")
    require(bool(np.all(np.isfinite(w))), ValueError, f"{name}: expected finite values")


def check_args(params, tokens, positions=None, segment_ids=None, caches=None, *,
               config: ModelConfig, weights=None) -> None:
    require(isinstance(config, ModelConfig), TypeError,
            f"config: expected a ModelConfig, got {type(config).__name__}")
    want = param_shapes(config)
    missing = [n for n in want if n not in params]
    require(not missing, ValueError, f"params: missing {missing[:5]}"
            f"{' and more' if len(missing) > 5 else ''} (see param_shapes(config))")
    extra = sorted(set(params) - set(want))
    require(not extra, ValueError, f"params: unexpected names {extra[:5]}")
    for name, shape in want.items():
        got = shape_of(params[name])
        require(got == shape, ValueError, f"params[{name!r}]: expected shape {shape}, got {got}")
    ts = shape_of(tokens)
    require(len(ts) == 2, ValueError, f"tokens: expected shape (B, T), got {ts}")
    require(is_integer_array(tokens), TypeError, "tokens: expected an integer array")
    for name, a in (("positions", positions), ("segment_ids", segment_ids)):
        if a is not None:
            require(shape_of(a) == ts, ValueError, f"{name}: expected shape {ts}, got "
                    f"{shape_of(a)}")
            require(is_integer_array(a), TypeError, f"{name}: expected an integer array")
    check_weights(weights, ts)
    if segment_ids is not None:
        require(caches is None, ValueError, "segment_ids: not allowed together with caches")
        require("linear" not in config.layer_kinds(), ValueError,
                "segment_ids: a model with lightning layers cannot pack documents")
        require(config.mla is None, ValueError,
                "segment_ids: MLA attention (spec/mla.py) has no segment mask yet")
    if caches is not None:
        require(len(caches) == config.n_layers, ValueError,
                f"caches: expected {config.n_layers} layers, got {len(caches)}")
        tc = cached_length(caches)
        for i, (layer, shapes) in enumerate(zip(caches, cache_shapes(config, ts[0], tc))):
            for n, s in shapes.items():
                require(n in layer and shape_of(layer[n]) == s, ValueError,
                        f"caches[{i}][{n!r}]: expected shape {s}, got "
                        f"{shape_of(layer[n]) if n in layer else 'nothing'}")


def check_tokens(tokens_np: np.ndarray, vocab: int) -> None:
    """Value check on host tokens, shared so that every implementation rejects the same."""
    if tokens_np.size and (tokens_np.min() < 0 or tokens_np.max() >= vocab):
        bad = int(tokens_np.min() if tokens_np.min() < 0 else tokens_np.max())
        raise IndexError(f"tokens: id {bad} outside [0, {vocab})")


def default_positions(b: int, t: int, segment_ids=None, offset: int = 0) -> np.ndarray:
    """The spec's default positions (int64, host): offset + arange, or index within segment."""
    if segment_ids is None:
        return np.broadcast_to(offset + np.arange(t), (b, t)).astype(np.int64)
    seg = np.asarray(segment_ids)
    pos = np.zeros((b, t), np.int64)
    for j in range(1, t):
        pos[:, j] = np.where(seg[:, j] == seg[:, j - 1], pos[:, j - 1] + 1, 0)
    return pos


# ----------------------------------------------------------------------------- strategies

FAMILIES = ("dense", "moe", "deepseek", "hybrid")


@st.composite
def _base(draw) -> dict:
    hkv = draw(st.sampled_from((1, 2, 3)))
    h = hkv * draw(st.sampled_from((1, 2, 3)))  # every grouping class: MQA, GQA, MHA
    hd = draw(st.sampled_from((2, 4, 5)))  # odd head dims: rotary on the first hd - 1
    scaling = draw(scalings())
    rd = hd - hd % 2
    if scaling is not None and scaling.kind == "ntk" and rd <= 2:
        scaling = None
    return dict(vocab_size=draw(st.sampled_from((7, 16))), d_model=draw(st.sampled_from((4, 6))),
                n_layers=draw(st.sampled_from((1, 2))), n_heads=h, n_kv_heads=hkv, head_dim=hd,
                rotary_dim=rd, d_ff=draw(st.sampled_from((3, 8))),
                norm_eps=draw(st.sampled_from((1e-6, 1e-2))),
                rope_theta=draw(st.sampled_from((10000.0, 10.0))), rope_scaling=scaling,
                rope_interleaved=draw(st.booleans()), tie_embeddings=draw(st.booleans()),
                z_loss=draw(st.sampled_from((0.0, 0.0, 1e-2))))


@st.composite
def _moe(draw, deepseek: bool) -> MoEConfig:
    if deepseek:
        e = 4
        return MoEConfig(n_experts=e, top_k=draw(st.sampled_from((1, 2))), d_expert=3,
                         d_shared=draw(st.sampled_from((0, 3))), score_func="sigmoid",
                         norm_topk_prob=True, n_group=2, topk_group=draw(st.sampled_from((1, 2))),
                         routed_scaling_factor=2.5, selection_bias=True,
                         masked_group_fill=draw(st.sampled_from(("zero", "-inf"))),
                         first_k_dense=draw(st.sampled_from((0, 1))), balance_loss="seq",
                         balance_coef=draw(st.sampled_from((0.0, 0.1))))
    e = draw(st.sampled_from((1, 2, 4)))
    d_shared = draw(st.sampled_from((0, 0, 3)))
    return MoEConfig(n_experts=e, top_k=draw(st.integers(1, min(2, e))),
                     d_expert=draw(st.sampled_from((3, 4))), d_shared=d_shared,
                     shared_gate=d_shared > 0 and draw(st.booleans()),
                     norm_topk_prob=draw(st.booleans()),
                     capacity_factor=draw(st.sampled_from((None, None, 1.0))),
                     balance_coef=draw(st.sampled_from((0.0, 0.1))),
                     router_z_coef=draw(st.sampled_from((0.0, 0.01))),
                     first_k_dense=draw(st.sampled_from((0, 0, 1))))


@st.composite
def model_configs(draw, family: str | None = None) -> ModelConfig:
    """Tiny configs of one family (or any): small enough for the float64 reference."""
    family = family or draw(st.sampled_from(FAMILIES))
    kw = draw(_base())
    if family == "dense":
        kw.update(qk_norm=draw(st.booleans()), attention_bias=draw(st.booleans()))
        if draw(st.booleans()):
            kw.update(sliding_window=draw(st.sampled_from((1, 2, 3))),
                      sliding_layers=draw(st.sampled_from((None, (0,)))))
    elif family == "moe":
        kw.update(qk_norm=draw(st.booleans()), moe=draw(_moe(False)))
    elif family == "deepseek":
        kw.update(mla=MLAConfig(kv_lora_rank=draw(st.sampled_from((3, 4))),
                                qk_nope_head_dim=draw(st.sampled_from((1, 2))),
                                qk_rope_head_dim=2, v_head_dim=draw(st.sampled_from((2, 3))),
                                q_lora_rank=draw(st.sampled_from((None, 3))),
                                mscale_all_dim=draw(st.sampled_from((0.0, 1.0))),
                                form=draw(st.sampled_from(("naive", "absorbed")))),
                  moe=draw(_moe(True)), rotary_dim=None,
                  rope_scaling=kw["rope_scaling"] if kw["rope_scaling"] is None or
                  kw["rope_scaling"].kind != "ntk" else None)
    elif family == "hybrid":
        kw.update(n_layers=draw(st.sampled_from((2, 3))),
                  hybrid=HybridConfig(linear_per_softmax=draw(st.sampled_from((0, 1, 2))),
                                      softmax_first=draw(st.booleans()),
                                      block_size=draw(st.sampled_from((1, 2, 4)))))
    else:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    if family in ("dense", "deepseek"):  # MTP: DeepSeek-V3's, and with packed documents
        depth = draw(st.sampled_from((0, 1, 2) if family == "deepseek" else (0, 0, 1)))
        if depth:
            kw.update(mtp_depth=depth, mtp_loss_weight=draw(st.sampled_from((0.3, 1.0))))
    return ModelConfig(name=family, **kw)


@st.composite
def batches(draw, config: ModelConfig) -> dict[str, np.ndarray | None]:
    """tokens, targets, segment_ids and positions of one batch: T = 1 included, padding (an
    ignored tail segment) and packing (sorted segment ids) where the model allows them."""
    b = draw(st.sampled_from((1, 2)))
    t = draw(st.sampled_from((1, 2, 5)))
    rng = np.random.default_rng(draw(S.seeds()))
    tokens = rng.integers(0, config.vocab_size, (b, t)).astype(np.int64)
    targets = rng.integers(0, config.vocab_size, (b, t)).astype(np.int64)
    targets[rng.uniform(size=(b, t)) < 0.2] = IGNORE_INDEX
    seg = None
    if "linear" not in config.layer_kinds() and config.mla is None and draw(st.booleans()):
        seg = np.sort(rng.integers(0, 3, (b, t)), axis=1).astype(np.int64)
        targets[seg == 2] = IGNORE_INDEX  # segment 2 plays the padding
    return {"tokens": tokens, "targets": targets, "segment_ids": seg, "positions": None}


@st.composite
def model_cases(draw, family: str | None = None) -> Case:
    config = draw(model_configs(family))
    return Case(draw(batches(config)),
                {"config": config, "seed": draw(S.seeds()),
                 "std": draw(st.sampled_from((0.3, 1.0))), "norm_std": 0.3})


def _bad(**spec):
    def build():
        change = dict(spec)  # build runs once per backend: never consume the closure's copy
        config = ModelConfig(vocab_size=7, d_model=4, n_layers=1, n_heads=2, d_ff=3)
        params = init_params(config, 0)
        arrays = {"params": params, "tokens": np.zeros((1, 3), np.int64), "positions": None,
                  "segment_ids": None, "caches": None}
        arrays.update(change.pop("arrays", {}))
        for name in change.pop("drop", ()):
            del params[name]
        for name, shape in change.pop("reshape", {}).items():
            params[name] = np.zeros(shape)
        return {}, {**arrays, "config": config, **change}  # one mapping: see test_errors
    return build


def _features(case: Case) -> dict[str, str]:
    """The config's conventions that change the math: family, attention and FFN kinds, the
    options each family draws."""
    c = case.params["config"]
    out = {"family": c.name, "tie_embeddings": str(c.tie_embeddings),
           "qk_norm": str(c.qk_norm), "rope_scaling": c.rope_scaling.kind if c.rope_scaling
           else "None", "mtp": "yes" if c.mtp_depth else "no",
           "sliding": "no" if c.sliding_window is None else "yes"}
    if c.moe is not None:
        out.update({"moe score_func": c.moe.score_func,
                    "moe capacity": "off" if c.moe.capacity_factor is None else "on"})
    if c.mla is not None:
        out["mla form"] = c.mla.form
    return out


COMPONENT = Component(
    stem="model",
    features=_features,
    coverage={"family": FAMILIES, "segment_ids": ("given", "absent"),
              "qk_norm": ("True", "False"), "tie_embeddings": ("True", "False")},
    inputs=("params", "tokens", "positions", "segment_ids", "caches"),
    outputs=("logits", "caches"),
    integer_inputs=("tokens", "positions", "segment_ids"),
    cases=model_cases,
    errors=(
        ErrorCase("a missing parameter", _bad(drop=("layers.0.attn.wq",)), ValueError,
                  r"params: missing \['layers\.0\.attn\.wq'\]"),
        ErrorCase("a parameter of the wrong shape", _bad(reshape={"embed": (7, 5)}),
                  ValueError, r"params\['embed'\]"),
        ErrorCase("float tokens", _bad(arrays={"tokens": np.zeros((1, 3))}), TypeError,
                  r"tokens"),
        ErrorCase("a token outside the vocabulary",
                  _bad(arrays={"tokens": np.full((1, 3), 7, np.int64)}), IndexError, r"tokens"),
        ErrorCase("segment ids with caches",
                  _bad(arrays={"segment_ids": np.zeros((1, 3), np.int64), "caches": [
                      {"k": np.zeros((1, 0, 2, 2)), "v": np.zeros((1, 0, 2, 2))}]}),
                  ValueError, r"segment_ids"),
        ErrorCase("positions of the wrong shape",
                  _bad(arrays={"positions": np.zeros((1, 2), np.int64)}), ValueError,
                  r"positions"),
    ),
    summary="Decoder models: dense GQA, MoE, DeepSeek-V3 (MLA + MoE), MiniMax hybrid",
)
