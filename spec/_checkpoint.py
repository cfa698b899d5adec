"""Hugging Face checkpoints: config and tensor-name maps both ways, and safetensors directories.

"Formats are spec" (DESIGN.md): every tree reads and writes checkpoints through this module, so
it lives in spec/ and imports neither torch nor transformers. Supported ``model_type``s (as
transformers 5.25 defines them): llama, mistral, qwen2, qwen3, mixtral, qwen3_moe, deepseek_v3.

Config (``config_from_hf``): the fields lmspec's ``ModelConfig`` represents are read, with the
defaults transformers 5.25 applies to a missing key; anything that changes the forward function
and that lmspec cannot represent (another activation, an MLP or o_proj bias, partial rotary,
dynamic / longrope RoPE, Qwen3-MoE's sparse-step layouts, quantized checkpoints, ...) is a
``ValueError`` naming the field. Training-only fields (dropout, aux-loss coefficients) and
``max_position_embeddings`` are not part of ``ModelConfig``. DeepSeek-V3's grouped routing
fills the masked groups with -inf (``DeepseekV3TopkRouter`` in transformers 5.25:
``masked_fill(~score_mask.bool(), float("-inf"))``), so ``masked_group_fill="-inf"``. Its
latent norms (``q_a_layernorm``, ``kv_a_layernorm``) use eps 1e-6 whatever ``rms_norm_eps``
is, while lmspec's MLA uses ``norm_eps``: a DeepSeek-V3 config with ``rms_norm_eps != 1e-6``
is rejected (the real checkpoints have 1e-6).

Tensors (lmspec names of ``param_shapes``; weights stored (in, out), HF's ``nn.Linear.weight``
is (out, in))::

    embed                      model.embed_tokens.weight
    lm_head (D, V)             lm_head.weight^T           (absent when tie_word_embeddings)
    final_norm                 model.norm.weight
    layers.{i}.attn_norm       model.layers.{i}.input_layernorm.weight
    layers.{i}.ffn_norm        model.layers.{i}.post_attention_layernorm.weight
    attn.wq .wk .wv .wo        self_attn.{q,k,v,o}_proj.weight^T
    attn.bq .bk .bv            self_attn.{q,k,v}_proj.bias          (qwen2)
    attn.q_norm .k_norm        self_attn.{q,k}_norm.weight          (qwen3, qwen3_moe)
    MLA attn.w_dq .q_norm      self_attn.q_a_proj.weight^T, self_attn.q_a_layernorm.weight
        attn.w_uq              self_attn.q_b_proj.weight^T (q_proj.weight^T without q_lora_rank)
        attn.w_dkv .kv_norm    self_attn.kv_a_proj_with_mqa.weight^T, self_attn.kv_a_layernorm
        attn.w_ukv .wo         self_attn.kv_b_proj.weight^T, self_attn.o_proj.weight^T
    ffn.w_gate .w_up .w_down   mlp.{gate,up,down}_proj.weight^T
    moe.router (D, E)          mlp.gate.weight^T   (mixtral: block_sparse_moe.gate.weight^T)
    moe.router_bias            mlp.gate.e_score_correction_bias     (deepseek_v3)
    moe.w_gate[e] .w_up[e]     mlp.experts.{e}.{gate,up}_proj.weight^T
    moe.w_down[e]              mlp.experts.{e}.down_proj.weight^T
                               (mixtral: block_sparse_moe.experts.{e}.w1 / w3 / w2)
    moe.shared.w_*             mlp.shared_experts.{gate,up,down}_proj.weight^T  (deepseek_v3)

That is the layout on disk (what ``save_pretrained`` writes and the hub holds). Reading also
accepts transformers' in-memory layout (a ``model.state_dict()``): fused experts
``mlp.experts.gate_up_proj`` (E, 2F, D) = [gate; up] and ``mlp.experts.down_proj`` (E, D, F),
and Mixtral's ``mlp.`` in place of ``block_sparse_moe.``. Writing gives the on-disk layout.
A missing or an unexpected tensor, or one of the wrong shape, is a ``ValueError`` naming it;
never a partial load. Ignored on reading, as transformers ignores them: ``*.rotary_emb.inv_freq``
buffers of old checkpoints and DeepSeek-V3's multi-token-prediction layers (index >=
num_hidden_layers, at most ``num_nextn_predict_layers`` of them).

Files: ``config.json`` plus ``model.safetensors`` or shards listed by
``model.safetensors.index.json``. Safetensors is read and written here (its format is an
8-byte little-endian header length, a JSON header, the raw little-endian bytes), with bfloat16
and float8 through ml_dtypes; never pickle.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lmspec.spec._model_config import MLAConfig, ModelConfig, MoEConfig, param_shapes
from lmspec.spec.rope import RopeScaling

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe", "deepseek_v3")
ARCHITECTURES = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM", "mixtral": "MixtralForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM",
}

# transformers 5.25's defaults for the keys read here (a key missing from config.json).
_COMMON = {"rms_norm_eps": 1e-6, "tie_word_embeddings": False, "hidden_act": "silu",
           "rope_theta": 10000.0}
DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"attention_bias": False, "mlp_bias": False, "max_position_embeddings": 2048},
    "mistral": {"sliding_window": 4096, "max_position_embeddings": 4096 * 32},
    "qwen2": {"use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 28,
              "max_position_embeddings": 32768},
    "qwen3": {"head_dim": 128, "attention_bias": False, "use_sliding_window": False,
              "sliding_window": 4096, "max_window_layers": 28, "max_position_embeddings": 32768},
    "mixtral": {"rms_norm_eps": 1e-5, "rope_theta": 1e6, "sliding_window": None,
                "num_experts_per_tok": 2, "num_local_experts": 8, "router_jitter_noise": 0.0,
                "max_position_embeddings": 4096 * 32},
    "qwen3_moe": {"attention_bias": False, "use_sliding_window": False, "sliding_window": 4096,
                  "decoder_sparse_step": 1, "moe_intermediate_size": 768,
                  "num_experts_per_tok": 8, "num_experts": 128, "norm_topk_prob": False,
                  "mlp_only_layers": [], "max_position_embeddings": 32768},
    "deepseek_v3": {"moe_intermediate_size": 2048, "n_shared_experts": 1,
                    "n_routed_experts": 256, "routed_scaling_factor": 2.5, "kv_lora_rank": 512,
                    "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128,
                    "qk_nope_head_dim": 128, "n_group": 8, "topk_group": 4,
                    "num_experts_per_tok": 8, "first_k_dense_replace": 3,
                    "norm_topk_prob": True, "rope_interleave": True, "attention_bias": False,
                    "max_position_embeddings": 4096},
}
# attribute_map of transformers 5.25: either key may be in config.json
_ALIASES = {("qwen3_moe", "num_experts"): "num_local_experts",
            ("deepseek_v3", "n_routed_experts"): "num_local_experts"}
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size")


def _unsupported(what: str) -> ValueError:
    return ValueError(f"hf config: unsupported {what} (lmspec cannot represent it)")


def _check_model_type(model_type) -> str:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type: unsupported {model_type!r}; expected one of "
                         f"{', '.join(MODEL_TYPES)}")
    return model_type


# ----------------------------------------------------------------------------- config: HF -> lmspec


def _rope_from_hf(g, mt: str) -> tuple[float, RopeScaling | None, dict]:
    """(theta, scaling, the rope parameters dict) from ``rope_parameters`` (transformers 5) or
    the older ``rope_theta`` + ``rope_scaling``."""
    rp = g("rope_parameters")
    if rp is None:
        rp = dict(g("rope_scaling") or {})
        rp.setdefault("rope_theta", g("rope_theta"))
    rp = dict(rp)
    if rp and all(isinstance(v, dict) for v in rp.values()):
        raise _unsupported(f"rope_parameters per layer type {sorted(rp)}")
    theta = float(rp.get("rope_theta") if rp.get("rope_theta") is not None else g("rope_theta"))
    kind = rp.get("rope_type", rp.get("type", "default"))
    prf = rp.get("partial_rotary_factor", g("partial_rotary_factor"))
    if prf is not None and float(prf) != 1.0:
        raise _unsupported(f"partial_rotary_factor={prf}")
    original = rp.get("original_max_position_embeddings") or g("max_position_embeddings")
    if kind == "default":
        return theta, None, rp
    if kind == "linear":
        return theta, RopeScaling("linear", float(rp["factor"])), rp
    if kind == "llama3":
        return theta, RopeScaling("llama3", float(rp["factor"]), int(original),
                                  low_freq_factor=float(rp["low_freq_factor"]),
                                  high_freq_factor=float(rp["high_freq_factor"])), rp
    if kind == "yarn":
        factor = rp.get("factor")
        factor = float(g("max_position_embeddings") / original if factor is None else factor)
        att, mscale, mscale_all = (rp.get("attention_factor"), rp.get("mscale"),
                                   rp.get("mscale_all_dim"))
        if att is None and mscale and mscale_all:  # HF _compute_yarn_parameters
            att = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all)
        return theta, RopeScaling(
            "yarn", factor, int(original), beta_fast=float(rp.get("beta_fast") or 32),
            beta_slow=float(rp.get("beta_slow") or 1),
            attention_factor=None if att is None else float(att),
            truncate=bool(rp.get("truncate", True))), rp
    raise _unsupported(f"rope_type {kind!r} (lmspec has default, linear, llama3, yarn)")


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _sliding_from_hf(g, mt: str, n_layers: int) -> tuple[int | None, tuple[int, ...] | None]:
    if mt in ("mistral", "mixtral"):
        w = g("sliding_window")
        return (None if w is None else int(w)), None
    w = g("sliding_window") if g("use_sliding_window") else None
    if mt == "qwen3_moe" or w is None:
        return (None if w is None else int(w)), None
    types = g("layer_types")
    if types is None:
        mwl = g("max_window_layers")
        types = ["sliding_attention" if i >= mwl else "full_attention" for i in range(n_layers)]
    if len(types) != n_layers or set(types) - {"sliding_attention", "full_attention"}:
        raise _unsupported(f"layer_types {types!r}")
    sliding = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
    if not sliding:
        return None, None
    return int(w), (None if len(sliding) == n_layers else sliding)


def config_from_hf(hf_config: dict) -> ModelConfig:
    """The ``ModelConfig`` of a Hugging Face ``config.json`` (as a dict)."""
    mt = _check_model_type(hf_config.get("model_type"))
    defaults = {**_COMMON, **DEFAULTS[mt]}

    def g(key):
        alias = _ALIASES.get((mt, key))
        if key not in hf_config and alias in hf_config:
            key = alias
        v = hf_config.get(key, defaults.get(key))
        return defaults.get(key) if v is None and key in ("rope_theta",) else v

    missing = [k for k in _REQUIRED if hf_config.get(k) is None]
    if missing:
        raise ValueError(f"hf config: missing {missing}")
    if g("hidden_act") != "silu":
        raise _unsupported(f"hidden_act={g('hidden_act')!r} (lmspec's FFN is SwiGLU)")
    if hf_config.get("quantization_config"):
        raise _unsupported("quantization_config (a quantized checkpoint)")
    if mt == "llama" and g("mlp_bias"):
        raise _unsupported("mlp_bias=True")
    if mt in ("llama", "qwen3", "qwen3_moe", "deepseek_v3") and g("attention_bias"):
        raise _unsupported(f"attention_bias=True for {mt} (it includes the output projection)")
    n_layers, n_heads = int(g("num_hidden_layers")), int(g("num_attention_heads"))
    kv = g("num_key_value_heads")
    theta, scaling, rp = _rope_from_hf(g, mt)
    kw: dict[str, Any] = dict(
        vocab_size=int(g("vocab_size")), d_model=int(g("hidden_size")), n_layers=n_layers,
        n_heads=n_heads, d_ff=int(g("intermediate_size")),
        n_kv_heads=None if kv is None else int(kv), norm_eps=float(g("rms_norm_eps")),
        rope_theta=theta, rope_scaling=scaling,
        tie_embeddings=bool(g("tie_word_embeddings")), name=str(hf_config.get("_name_or_path")
                                                                or mt))
    if mt != "deepseek_v3":
        hd = g("head_dim")
        kw["head_dim"] = int(hd) if hd is not None else kw["d_model"] // n_heads
        kw["sliding_window"], kw["sliding_layers"] = _sliding_from_hf(g, mt, n_layers)
        kw["qk_norm"] = mt in ("qwen3", "qwen3_moe")
        kw["attention_bias"] = mt == "qwen2"
    if mt == "mixtral":
        if g("router_jitter_noise"):
            raise _unsupported(f"router_jitter_noise={g('router_jitter_noise')}")
        kw["moe"] = MoEConfig(n_experts=int(g("num_local_experts")),
                              top_k=int(g("num_experts_per_tok")),
                              d_expert=int(g("intermediate_size")), norm_topk_prob=True)
    elif mt == "qwen3_moe":
        only = sorted(int(i) for i in (g("mlp_only_layers") or []))
        if g("decoder_sparse_step") != 1:
            raise _unsupported(f"decoder_sparse_step={g('decoder_sparse_step')} (MoE layers "
                               "are all layers from first_k_dense on)")
        if only != list(range(len(only))):
            raise _unsupported(f"mlp_only_layers={only} (only a prefix 0..k-1 is representable)")
        kw["moe"] = MoEConfig(n_experts=int(g("num_experts")),
                              top_k=int(g("num_experts_per_tok")),
                              d_expert=int(g("moe_intermediate_size")),
                              norm_topk_prob=bool(g("norm_topk_prob")), first_k_dense=len(only))
    elif mt == "deepseek_v3":
        if kv is not None and int(kv) != n_heads:
            raise _unsupported(f"num_key_value_heads={kv} != num_attention_heads={n_heads} "
                               "for MLA")
        for key, want in (("scoring_func", "sigmoid"), ("topk_method", "noaux_tc")):
            if hf_config.get(key) not in (None, want):
                raise _unsupported(f"{key}={hf_config[key]!r} (expected {want!r})")
        if float(g("rms_norm_eps")) != 1e-6:
            # DeepseekV3Attention builds q_a_layernorm and kv_a_layernorm with RMSNorm's
            # default eps 1e-6 whatever rms_norm_eps says; lmspec's MLA uses norm_eps for them
            raise _unsupported(f"rms_norm_eps={g('rms_norm_eps')} for deepseek_v3 (its latent "
                               "norms always use 1e-6; lmspec has one norm_eps)")
        n_shared, fe = g("n_shared_experts"), int(g("moe_intermediate_size"))
        if not n_shared:
            raise _unsupported(f"n_shared_experts={n_shared}")
        mscale_all = rp.get("mscale_all_dim") if rp.get("rope_type", rp.get("type",
                                                                               "default")) \
            != "default" else 0.0
        kw["n_kv_heads"] = None
        kw["rope_interleaved"] = bool(g("rope_interleave"))
        q_lora = g("q_lora_rank")
        kw["mla"] = MLAConfig(kv_lora_rank=int(g("kv_lora_rank")),
                              qk_nope_head_dim=int(g("qk_nope_head_dim")),
                              qk_rope_head_dim=int(g("qk_rope_head_dim")),
                              v_head_dim=int(g("v_head_dim")),
                              q_lora_rank=None if q_lora is None else int(q_lora),
                              mscale_all_dim=float(mscale_all or 0.0))
        kw["moe"] = MoEConfig(
            n_experts=int(g("n_routed_experts")), top_k=int(g("num_experts_per_tok")),
            d_expert=fe, d_shared=int(n_shared) * fe, score_func="sigmoid",
            norm_topk_prob=bool(g("norm_topk_prob")), n_group=int(g("n_group") or 1),
            topk_group=int(g("topk_group") or 1),
            routed_scaling_factor=float(g("routed_scaling_factor")),
            masked_group_fill="-inf", selection_bias=True,
            first_k_dense=int(g("first_k_dense_replace") or 0))
    return ModelConfig(**kw)


# ----------------------------------------------------------------------------- config: lmspec -> HF


def _rope_to_hf(c: ModelConfig, mt: str) -> dict:
    s = c.rope_scaling
    rp: dict[str, Any] = {"rope_theta": float(c.rope_theta), "rope_type": "default"}
    if s is None:
        pass
    elif s.kind == "linear":
        rp.update(rope_type="linear", factor=s.factor)
    elif s.kind == "llama3":
        rp.update(rope_type="llama3", factor=s.factor, low_freq_factor=s.low_freq_factor,
                  high_freq_factor=s.high_freq_factor,
                  original_max_position_embeddings=s.original_max_position)
    elif s.kind == "yarn":
        rp.update(rope_type="yarn", factor=s.factor,
                  original_max_position_embeddings=s.original_max_position,
                  beta_fast=s.beta_fast, beta_slow=s.beta_slow)
        if s.attention_factor is not None:
            rp["attention_factor"] = s.attention_factor
        if not s.truncate:
            rp["truncate"] = False
    else:
        raise ValueError(f"rope_scaling: kind {s.kind!r} has no {mt} form (HF 'dynamic' is not "
                         "static NTK)")
    if c.mla is not None and c.mla.mscale_all_dim:
        if s is None:
            raise ValueError("mla.mscale_all_dim: has no HF form without rope_scaling")
        rp["mscale_all_dim"] = c.mla.mscale_all_dim
    return rp


def _need(cond: bool, mt: str, what: str) -> None:
    if not cond:
        raise ValueError(f"config_to_hf: {what} has no {mt} form")


def config_to_hf(config: ModelConfig, model_type: str, *,
                 max_position_embeddings: int | None = None) -> dict:
    """A ``config.json`` dict of ``model_type`` for ``config`` (ValueError naming the field
    that type cannot express). Training-only fields (z_loss, balance terms) are dropped."""
    c, mt = config, _check_model_type(model_type)
    _need(c.hybrid is None, mt, "hybrid")
    _need(c.mtp_depth == 0, mt, f"mtp_depth={c.mtp_depth} (transformers has no MTP modules)")
    _need(c.rotary_dim is None or c.mla is not None or c.rotary_dim == c.hd, mt,
          f"rotary_dim={c.rotary_dim} (partial rotary)")
    moe, mla = c.moe, c.mla
    _need((mla is not None) == (mt == "deepseek_v3"), mt, f"mla={mla}")
    _need((moe is not None) == (mt in ("mixtral", "qwen3_moe", "deepseek_v3")), mt, f"moe={moe}")
    _need(mt == "deepseek_v3" or not c.rope_interleaved, mt, "rope_interleaved=True")
    _need(c.qk_norm == (mt in ("qwen3", "qwen3_moe")), mt, f"qk_norm={c.qk_norm}")
    _need(c.attention_bias == (mt == "qwen2"), mt, f"attention_bias={c.attention_bias}")
    if moe is not None:
        _need(moe.capacity_factor is None, mt, f"moe.capacity_factor={moe.capacity_factor}")
        _need(not moe.shared_gate, mt, "moe.shared_gate")
    if max_position_embeddings is None:
        s = c.rope_scaling
        max_position_embeddings = max(4096, int(s.original_max_position * s.factor)) if (
            s is not None and s.kind in ("yarn", "llama3")) else 4096
    hf: dict[str, Any] = {
        "architectures": [ARCHITECTURES[mt]], "model_type": mt, "vocab_size": c.vocab_size,
        "hidden_size": c.d_model, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads, "num_key_value_heads": c.kv_heads,
        "intermediate_size": c.d_ff, "rms_norm_eps": c.norm_eps,
        "tie_word_embeddings": c.tie_embeddings, "hidden_act": "silu",
        "max_position_embeddings": int(max_position_embeddings),
        "rope_parameters": _rope_to_hf(c, mt), "attention_dropout": 0.0,
    }
    if mla is None:
        hf["head_dim"] = c.hd
    if mt in ("llama", "qwen3", "qwen3_moe"):
        hf["attention_bias"] = False
    if mt == "llama":
        hf["mlp_bias"] = False
        _need(c.sliding_window is None, mt, f"sliding_window={c.sliding_window}")
    if mt in ("mistral", "mixtral"):
        _need(c.sliding_layers is None, mt, f"sliding_layers={c.sliding_layers}")
        hf["sliding_window"] = c.sliding_window
    if mt in ("qwen2", "qwen3"):
        types = ["sliding_attention" if c.window(i) is not None else "full_attention"
                 for i in range(c.n_layers)]
        first = next((i for i, t in enumerate(types) if t == "sliding_attention"), c.n_layers)
        hf.update(use_sliding_window=c.sliding_window is not None,
                  sliding_window=c.sliding_window, layer_types=types,
                  max_window_layers=first if all(
                      t == "sliding_attention" for t in types[first:]) else c.n_layers)
    if mt == "qwen3_moe":
        _need(c.sliding_layers is None, mt, f"sliding_layers={c.sliding_layers}")
        hf.update(use_sliding_window=c.sliding_window is not None,
                  sliding_window=c.sliding_window)
    if mt in ("mixtral", "qwen3_moe"):
        _need(moe.score_func == "softmax", mt, f"moe.score_func={moe.score_func!r}")
        _need(moe.d_shared == 0, mt, f"moe.d_shared={moe.d_shared}")
        _need(moe.n_group == 1 and moe.routed_scaling_factor == 1.0 and not moe.selection_bias,
              mt, "group-limited, scaled or bias-corrected routing")
    if mt == "mixtral":
        _need(moe.norm_topk_prob, mt, "moe.norm_topk_prob=False")
        _need(moe.first_k_dense == 0, mt, f"moe.first_k_dense={moe.first_k_dense}")
        hf.update(intermediate_size=moe.d_expert, num_local_experts=moe.n_experts,
                  num_experts_per_tok=moe.top_k, router_jitter_noise=0.0)
    if mt == "qwen3_moe":
        hf.update(num_experts=moe.n_experts, num_experts_per_tok=moe.top_k,
                  moe_intermediate_size=moe.d_expert, norm_topk_prob=moe.norm_topk_prob,
                  decoder_sparse_step=1, mlp_only_layers=list(range(moe.first_k_dense)))
    if mt == "deepseek_v3":
        _need(moe.score_func == "sigmoid", mt, f"moe.score_func={moe.score_func!r}")
        _need(moe.selection_bias, mt, "moe.selection_bias=False")
        _need(moe.masked_group_fill == "-inf", mt,
              f"moe.masked_group_fill={moe.masked_group_fill!r} (transformers 5.25 fills -inf)")
        _need(moe.d_shared > 0 and moe.d_shared % moe.d_expert == 0, mt,
              f"moe.d_shared={moe.d_shared} (a positive multiple of d_expert={moe.d_expert})")
        hf.update(num_key_value_heads=c.n_heads, kv_lora_rank=mla.kv_lora_rank,
                  q_lora_rank=mla.q_lora_rank, qk_nope_head_dim=mla.qk_nope_head_dim,
                  qk_rope_head_dim=mla.qk_rope_head_dim, v_head_dim=mla.v_head_dim,
                  head_dim=mla.qk_rope_head_dim, rope_interleave=c.rope_interleaved,
                  attention_bias=False, n_routed_experts=moe.n_experts,
                  num_experts_per_tok=moe.top_k, moe_intermediate_size=moe.d_expert,
                  n_shared_experts=moe.d_shared // moe.d_expert,
                  norm_topk_prob=moe.norm_topk_prob, n_group=moe.n_group,
                  topk_group=moe.topk_group, routed_scaling_factor=moe.routed_scaling_factor,
                  first_k_dense_replace=moe.first_k_dense)
    return hf


# ----------------------------------------------------------------------------- tensor names


def infer_model_type(config: ModelConfig) -> str:
    """The naming family of a config (dense types share one set of names)."""
    if config.mla is not None:
        return "deepseek_v3"
    if config.moe is not None:
        return "qwen3_moe" if config.qk_norm else "mixtral"
    return "qwen3" if config.qk_norm else "qwen2" if config.attention_bias else "llama"


def _plain_map(config: ModelConfig, mt: str) -> dict[str, tuple[str, bool]]:
    """lmspec name -> (HF name, transposed) for every non-expert tensor."""
    c = config
    m: dict[str, tuple[str, bool]] = {"embed": ("model.embed_tokens.weight", False),
                                      "final_norm": ("model.norm.weight", False)}
    if not c.tie_embeddings:
        m["lm_head"] = ("lm_head.weight", True)
    moe_pre = "block_sparse_moe" if mt == "mixtral" else "mlp"
    for name in param_shapes(c):
        if not name.startswith("layers."):
            continue
        _, i, rest = name.split(".", 2)
        p = f"model.layers.{i}."
        attn = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj"}
        if c.mla is not None:
            attn = {"w_dq": "q_a_proj", "w_uq": "q_b_proj" if c.mla.q_lora_rank else "q_proj",
                    "w_dkv": "kv_a_proj_with_mqa", "w_ukv": "kv_b_proj", "wo": "o_proj"}
        if rest in ("attn_norm", "ffn_norm"):
            hf = "input_layernorm" if rest == "attn_norm" else "post_attention_layernorm"
            m[name] = (p + hf + ".weight", False)
        elif rest.startswith("attn."):
            a = rest[5:]
            if a in attn:
                m[name] = (f"{p}self_attn.{attn[a]}.weight", True)
            elif a in ("bq", "bk", "bv"):
                m[name] = (f"{p}self_attn.{a[1]}_proj.bias", False)
            elif c.mla is not None and a in ("q_norm", "kv_norm"):
                hf = "q_a_layernorm" if a == "q_norm" else "kv_a_layernorm"
                m[name] = (f"{p}self_attn.{hf}.weight", False)
            elif a in ("q_norm", "k_norm"):
                m[name] = (f"{p}self_attn.{a}.weight", False)
            else:
                raise ValueError(f"{name}: no Hugging Face name for it")
        elif rest.startswith("ffn."):
            m[name] = (f"{p}mlp.{rest[4:].replace('w_', '')}_proj.weight", True)
        elif rest == "moe.router":
            m[name] = (f"{p}{moe_pre}.gate.weight", True)
        elif rest == "moe.router_bias":
            m[name] = (f"{p}{moe_pre}.gate.e_score_correction_bias", False)
        elif rest.startswith("moe.shared."):
            w = rest[len("moe.shared.w_"):]
            m[name] = (f"{p}mlp.shared_experts.{w}_proj.weight", True)
        elif rest in ("moe.w_gate", "moe.w_up", "moe.w_down"):
            continue  # per expert, below
        else:
            raise ValueError(f"{name}: no Hugging Face name for it")
    return m


def _expert_names(config: ModelConfig, mt: str, i: int) -> dict[str, list[str]]:
    e, p = config.moe.n_experts, f"model.layers.{i}."
    if mt == "mixtral":
        w = {"w_gate": "w1", "w_up": "w3", "w_down": "w2"}
        return {k: [f"{p}block_sparse_moe.experts.{j}.{v}.weight" for j in range(e)]
                for k, v in w.items()}
    return {k: [f"{p}mlp.experts.{j}.{k[2:]}_proj.weight" for j in range(e)]
            for k in ("w_gate", "w_up", "w_down")}


def hf_names(config: ModelConfig, model_type: str | None = None) -> list[str]:
    """Every tensor name of the on-disk HF checkpoint of ``config``, sorted."""
    mt = model_type or infer_model_type(config)
    names = [hf for hf, _ in _plain_map(config, mt).values()]
    for i in range(config.n_layers):
        if config.is_moe_layer(i):
            for v in _expert_names(config, mt, i).values():
                names += v
    return sorted(names)


def _to_disk_layout(config: ModelConfig, mt: str, t: dict) -> dict:
    """transformers' in-memory names (fused experts; Mixtral's ``mlp.``) -> on-disk names."""
    t = dict(t)
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        if mt == "mixtral":
            for k in [k for k in t if k.startswith(p + "mlp.")]:
                t[p + "block_sparse_moe." + k[len(p + "mlp."):]] = t.pop(k)
        pre = p + ("block_sparse_moe" if mt == "mixtral" else "mlp") + ".experts."
        if pre + "gate_up_proj" in t and config.is_moe_layer(i):
            names, f = _expert_names(config, mt, i), config.moe.d_expert
            gu = np.asarray(t.pop(pre + "gate_up_proj"))
            if gu.ndim != 3 or gu.shape[0] != config.moe.n_experts or gu.shape[1] != 2 * f:
                raise ValueError(f"{pre}gate_up_proj: expected shape "
                                 f"({config.moe.n_experts}, {2 * f}, {config.d_model}), got "
                                 f"{gu.shape}")
            for j, (ng, nu) in enumerate(zip(names["w_gate"], names["w_up"])):
                t[ng], t[nu] = gu[j, :f], gu[j, f:]
            if pre + "down_proj" in t:
                down = np.asarray(t.pop(pre + "down_proj"))
                for j, nd in enumerate(names["w_down"]):
                    t[nd] = down[j]
    return t


_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def hf_to_lmspec(config: ModelConfig, hf_tensors: dict, model_type: str | None = None
                 ) -> dict[str, np.ndarray]:
    """lmspec parameters (``param_shapes(config)`` order, native dtypes) from HF tensors.

    ``model_type`` picks the naming family (default: inferred from the config; only Mixtral's
    expert names differ among the MoE types, the dense types share theirs)."""
    mt = model_type or infer_model_type(config)
    t = {k: v for k, v in _to_disk_layout(config, mt, hf_tensors).items()
         if not _IGNORED.search(k)}
    plain, shapes = _plain_map(config, mt), param_shapes(config)
    if config.tie_embeddings and "lm_head.weight" in t:  # some tied checkpoints keep a copy
        if not np.array_equal(np.asarray(t["lm_head.weight"]),
                              np.asarray(t.get("model.embed_tokens.weight"))):
            raise ValueError("lm_head.weight: present and different from "
                             "model.embed_tokens.weight, but tie_word_embeddings is set")
        t.pop("lm_head.weight")
    want = hf_names(config, mt)
    missing = [n for n in want if n not in t]
    if missing:
        raise ValueError(f"hf tensors: missing {missing[:5]}"
                         f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''}")
    extra = sorted(set(t) - set(want))
    if extra:
        raise ValueError(f"hf tensors: unexpected {extra[:5]}"
                         f"{f' and {len(extra) - 5} more' if len(extra) > 5 else ''}")
    out: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name in plain:
            hf, tr = plain[name]
            a = np.asarray(t[hf])
            a = a.T if tr else a
            _check_shape(hf, a.T if tr else a, shape[::-1] if tr else shape)
        else:
            i, w = int(name.split(".")[1]), name.rsplit(".", 1)[-1]
            parts = []
            for hf in _expert_names(config, mt, i)[w]:
                a = np.asarray(t[hf])
                _check_shape(hf, a, shape[1:][::-1])
                parts.append(a.T)
            a = np.stack(parts)
        out[name] = np.ascontiguousarray(a)
    return out


def _check_shape(hf: str, a: np.ndarray, shape) -> None:
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{hf}: expected shape {tuple(shape)}, got {tuple(a.shape)}")


def lmspec_to_hf(config: ModelConfig, params: dict, model_type: str) -> dict[str, np.ndarray]:
    """The on-disk HF tensors (``save_pretrained``'s layout) of lmspec parameters."""
    mt = _check_model_type(model_type)
    shapes = param_shapes(config)
    missing = [n for n in shapes if n not in params]
    if missing:
        raise ValueError(f"params: missing {missing[:5]}")
    extra = sorted(set(params) - set(shapes))
    if extra:
        raise ValueError(f"params: unexpected names {extra[:5]}")
    plain, out = _plain_map(config, mt), {}
    for name, shape in shapes.items():
        a = np.asarray(params[name])
        if tuple(a.shape) != shape:
            raise ValueError(f"params[{name!r}]: expected shape {shape}, got {a.shape}")
        if name in plain:
            hf, tr = plain[name]
            out[hf] = np.ascontiguousarray(a.T if tr else a)
        else:
            i, w = int(name.split(".")[1]), name.rsplit(".", 1)[-1]
            for j, hf in enumerate(_expert_names(config, mt, i)[w]):
                out[hf] = np.ascontiguousarray(a[j].T)
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------- safetensors

_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
           "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _np_dtype(name: str) -> np.dtype:
    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Every tensor of one ``.safetensors`` file, as NumPy arrays of the stored dtype."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    base, out = 8 + n, {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        dt = _np_dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        lo, hi = info["data_offsets"]
        shape = tuple(info["shape"])
        if hi - lo != math.prod(shape) * dt.itemsize:
            raise ValueError(f"{path}: tensor {name!r}: {hi - lo} bytes for shape {shape}")
        out[name] = np.frombuffer(data, dt, math.prod(shape), base + lo).reshape(shape).copy()
    return out


def write_safetensors(path, tensors: dict, metadata: dict | None = None) -> None:
    """One ``.safetensors`` file (names sorted, 8-byte aligned header, ``format: pt``)."""
    rev = {v: k for k, v in _DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    blobs, off = [], 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name], order="C")  # keeps 0-d (ascontiguousarray: 1-d)
        key = a.dtype.name if a.dtype.name in rev else None
        if key is None:
            raise ValueError(f"{name}: dtype {a.dtype} has no safetensors form")
        b = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": rev[key], "shape": list(a.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(h)))
        fh.write(h)
        for b in blobs:
            fh.write(b)


# ----------------------------------------------------------------------------- directories


def read_hf_tensors(path) -> dict[str, np.ndarray]:
    """All tensors of an HF directory: ``model.safetensors`` or the shards of its index."""
    path = Path(path)
    index, single = path / "model.safetensors.index.json", path / "model.safetensors"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        out: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            for k, v in read_safetensors(path / shard).items():
                if k in out:
                    raise ValueError(f"{path}: tensor {k!r} in more than one shard")
                if weight_map.get(k) != shard:
                    raise ValueError(f"{path}: tensor {k!r} in {shard}, the index says "
                                     f"{weight_map.get(k)}")
                out[k] = v
        absent = sorted(set(weight_map) - set(out))
        if absent:
            raise ValueError(f"{path}: the index lists tensors no shard holds: {absent[:5]}")
        return out
    if single.exists():
        return read_safetensors(single)
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise ValueError(f"{path}: only pickle checkpoints (*.bin); lmspec reads safetensors")
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")


def load_hf_dir(path, dtype=None) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """``(config, params)`` of a Hugging Face checkpoint directory; params in their stored
    dtype, or cast to ``dtype`` (e.g. ``np.float64`` for the reference)."""
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{path}: no config.json")
    hf = json.loads(cfg_path.read_text())
    config = config_from_hf(hf)
    tensors = read_hf_tensors(path)
    mt = hf["model_type"]
    if mt == "deepseek_v3":  # multi-token-prediction layers: transformers ignores them too
        n_mtp = int(hf.get("num_nextn_predict_layers", hf.get("num_mtp_layers", 0)) or 0)
        mtp = re.compile(r"^model\.layers\.(\d+)\.")
        for k in list(tensors):
            m = mtp.match(k)
            if m and config.n_layers <= int(m.group(1)) < config.n_layers + n_mtp:
                del tensors[k]
    params = hf_to_lmspec(config, tensors, mt)
    if dtype is not None:
        params = {k: v.astype(dtype) for k, v in params.items()}
    return config, params


def save_hf_dir(path, config: ModelConfig, params: dict, model_type: str, *,
                max_shard_bytes: int | None = None, overwrite: bool = False,
                max_position_embeddings: int | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (or shards of at most
    ``max_shard_bytes`` plus ``model.safetensors.index.json``) that transformers'
    ``AutoModelForCausalLM.from_pretrained`` loads. Tensors keep their dtype; the config's
    ``dtype`` names it. Atomic: written into a temporary sibling, then renamed into place
    (an existing ``path`` is replaced only with ``overwrite``)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (pass overwrite=True to replace it)")
    hf_cfg = config_to_hf(config, model_type, max_position_embeddings=max_position_embeddings)
    tensors = lmspec_to_hf(config, params, model_type)
    dts = {np.asarray(v).dtype.name for v in tensors.values()}
    hf_cfg["dtype"] = dts.pop() if len(dts) == 1 else "float32"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True) + "\n")
        if max_shard_bytes is None:
            write_safetensors(tmp / "model.safetensors", tensors)
        else:
            shards: list[dict] = [{}]
            size = 0
            for k, v in tensors.items():
                nb = np.asarray(v).nbytes
                if shards[-1] and size + nb > max_shard_bytes:
                    shards.append({})
                    size = 0
                shards[-1][k] = v
                size += nb
            weight_map = {}
            for j, shard in enumerate(shards):
                fname = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
                write_safetensors(tmp / fname, shard)
                weight_map.update({k: fname for k in shard})
            total = sum(np.asarray(v).nbytes for v in tensors.values())
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.rename(path, old / "x")
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
