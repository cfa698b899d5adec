"""The model's configuration, parameter naming scheme, initialization and size arithmetic.

Infrastructure of ``spec/model.py`` (the stem): frozen, validated dataclasses; every
implementation (reference, backends, checkpoint readers, trainer, engine) reads the same
config and walks the same flat ``{name: array}`` parameter mapping.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from lmspec.spec._contract import require
from lmspec.spec.linear_attention import HybridPattern
from lmspec.spec.mla import FORMS, kv_cache_size
from lmspec.spec.moe_balance_loss import KINDS as BALANCE_KINDS
from lmspec.spec.moe_router import MASKED_GROUP_FILLS, SCORE_FUNCS
from lmspec.spec.rope import RopeScaling

IGNORE_INDEX = -100


@dataclass(frozen=True)
class MLAConfig:
    """DeepSeek-V2/V3 latent attention dimensions (see ``spec/mla.py``)."""

    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None
    mscale_all_dim: float = 0.0
    form: str = "naive"

    def __post_init__(self) -> None:
        for name in ("kv_lora_rank", "qk_nope_head_dim", "v_head_dim"):
            require(getattr(self, name) >= 1, ValueError,
                    f"mla.{name}: expected >= 1, got {getattr(self, name)}")
        require(self.qk_rope_head_dim >= 2 and self.qk_rope_head_dim % 2 == 0, ValueError,
                f"mla.qk_rope_head_dim: expected an even value >= 2, got {self.qk_rope_head_dim}")
        require(self.q_lora_rank is None or self.q_lora_rank >= 1, ValueError,
                f"mla.q_lora_rank: expected None or >= 1, got {self.q_lora_rank}")
        require(self.form in FORMS, ValueError,
                f"mla.form: expected one of {FORMS}, got {self.form!r}")


@dataclass(frozen=True)
class MoEConfig:
    """Routed experts (``moe_router`` + ``moe_layer``) in place of the dense FFN.

    ``first_k_dense`` layers keep a dense SwiGLU of width ``ModelConfig.d_ff`` (DeepSeek-V3's
    ``first_k_dense_replace``). ``d_shared`` > 0 adds a shared expert of that width
    (DeepSeek: ``n_shared_experts * moe_intermediate_size``), gated by a sigmoid when
    ``shared_gate`` (Qwen2-MoE). ``selection_bias`` adds DeepSeek-V3's
    ``e_score_correction_bias`` (a buffer: no gradient; training updates it by
    ``moe_bias_update``). ``balance_loss`` / ``balance_coef`` and ``router_z_coef`` weight
    ``moe_balance_loss`` terms into the model loss (summed over MoE layers).
    """

    n_experts: int
    top_k: int
    d_expert: int
    d_shared: int = 0
    shared_gate: bool = False
    score_func: str = "softmax"
    norm_topk_prob: bool = True
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    masked_group_fill: str = "zero"
    selection_bias: bool = False
    first_k_dense: int = 0
    capacity_factor: float | None = None
    balance_loss: str = "switch"
    balance_coef: float = 0.0
    router_z_coef: float = 0.0

    def __post_init__(self) -> None:
        require(self.n_experts >= 1, ValueError,
                f"moe.n_experts: expected >= 1, got {self.n_experts}")
        require(self.d_expert >= 1, ValueError, f"moe.d_expert: expected >= 1, got {self.d_expert}")
        require(self.d_shared >= 0, ValueError, f"moe.d_shared: expected >= 0, got {self.d_shared}")
        require(not self.shared_gate or self.d_shared > 0, ValueError,
                "moe.shared_gate: needs a shared expert (d_shared > 0)")
        require(self.score_func in SCORE_FUNCS, ValueError,
                f"moe.score_func: expected one of {SCORE_FUNCS}, got {self.score_func!r}")
        require(self.masked_group_fill in MASKED_GROUP_FILLS, ValueError,
                f"moe.masked_group_fill: expected one of {MASKED_GROUP_FILLS}")
        e, g = self.n_experts, self.n_group
        require(g >= 1 and e % g == 0 and (g == 1 or e // g >= 2), ValueError,
                f"moe.n_group: expected a divisor of n_experts={e} leaving >= 2 experts a group,"
                f" got {g}")
        require(1 <= self.topk_group <= g, ValueError,
                f"moe.topk_group: expected 1 <= topk_group <= n_group={g}, got {self.topk_group}")
        room = self.topk_group * (e // g) if g > 1 else e
        require(1 <= self.top_k <= room, ValueError,
                f"moe.top_k: expected 1 <= top_k <= {room}, got {self.top_k}")
        require(self.routed_scaling_factor > 0, ValueError,
                "moe.routed_scaling_factor: expected > 0")
        require(self.first_k_dense >= 0, ValueError, "moe.first_k_dense: expected >= 0")
        require(self.capacity_factor is None or self.capacity_factor > 0, ValueError,
                "moe.capacity_factor: expected None or > 0")
        require(self.balance_loss in BALANCE_KINDS and self.balance_loss != "z", ValueError,
                f"moe.balance_loss: expected 'switch' or 'seq', got {self.balance_loss!r}")
        require(self.balance_coef >= 0 and self.router_z_coef >= 0, ValueError,
                "moe.balance_coef, moe.router_z_coef: expected >= 0")


@dataclass(frozen=True)
class HybridConfig:
    """MiniMax-01's hybrid stack: lightning-attention layers interleaved with softmax ones.

    The layer kinds are ``HybridPattern(n_layers, linear_per_softmax, softmax_first)``;
    ``linear_per_softmax = 0`` is an all-softmax stack (the dense model, exactly). A lightning
    layer's per-head decay is fixed (MiniMax's ``slope_rate``), see ``lightning_log_decay``.
    """

    linear_per_softmax: int = 7
    softmax_first: bool = False
    block_size: int = 16

    def __post_init__(self) -> None:
        require(self.linear_per_softmax >= 0, ValueError,
                "hybrid.linear_per_softmax: expected >= 0")
        require(self.block_size >= 1, ValueError, "hybrid.block_size: expected >= 1")


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer of any of the seed's families. See ``spec/model.py``."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rope_interleaved: bool = False
    rotary_dim: int | None = None
    tie_embeddings: bool = False
    qk_norm: bool = False
    attention_bias: bool = False
    sliding_window: int | None = None
    sliding_layers: tuple[int, ...] | None = None
    mla: MLAConfig | None = None
    moe: MoEConfig | None = None
    hybrid: HybridConfig | None = None
    z_loss: float = 0.0
    mtp_depth: int = 0
    mtp_loss_weight: float = 0.3
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for n in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff"):
            require(isinstance(getattr(self, n), int) and getattr(self, n) >= 1, ValueError,
                    f"{n}: expected an integer >= 1, got {getattr(self, n)!r}")
        require(self.kv_heads >= 1 and self.n_heads % self.kv_heads == 0, ValueError,
                f"n_kv_heads: expected a divisor of n_heads={self.n_heads}, got {self.n_kv_heads}")
        require(self.hd >= 1, ValueError, f"head_dim: expected >= 1, got {self.head_dim}")
        r = self.rotary_dim if self.rotary_dim is not None else self.hd
        require(self.mla is not None or (r >= 2 and r % 2 == 0 and r <= self.hd), ValueError,
                f"rotary_dim: expected an even value in [2, head_dim={self.hd}], got {r}")
        require(self.norm_eps > 0, ValueError, f"norm_eps: expected > 0, got {self.norm_eps}")
        require(self.rope_theta > 0, ValueError, "rope_theta: expected > 0")
        require(self.sliding_window is None or self.sliding_window >= 1, ValueError,
                f"sliding_window: expected None or >= 1, got {self.sliding_window}")
        require(self.sliding_layers is None or self.sliding_window is not None, ValueError,
                "sliding_layers: needs sliding_window")
        if self.sliding_layers is not None:
            require(all(0 <= i < self.n_layers for i in self.sliding_layers), ValueError,
                    f"sliding_layers: expected layer indices in [0, {self.n_layers})")
        require(not (self.mla is not None and (self.qk_norm or self.attention_bias)), ValueError,
                "mla: qk_norm and attention_bias apply to GQA attention only")
        require(not (self.mla is not None and self.sliding_window is not None), ValueError,
                "sliding_window: not defined for MLA attention")
        if self.moe is not None:
            require(self.moe.first_k_dense <= self.n_layers, ValueError,
                    "moe.first_k_dense: expected <= n_layers")
        require(self.z_loss >= 0, ValueError, f"z_loss: expected >= 0, got {self.z_loss}")
        require(isinstance(self.mtp_depth, int) and self.mtp_depth >= 0, ValueError,
                f"mtp_depth: expected an integer >= 0, got {self.mtp_depth!r}")
        require(self.mtp_loss_weight >= 0, ValueError,
                f"mtp_loss_weight: expected >= 0, got {self.mtp_loss_weight}")

    # -- derived
    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def hd(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    def layer_kinds(self) -> tuple[str, ...]:
        """Each layer's token mixer: "softmax" or "linear" (lightning attention)."""
        if self.hybrid is None:
            return ("softmax",) * self.n_layers
        return HybridPattern(self.n_layers, self.hybrid.linear_per_softmax,
                             self.hybrid.softmax_first).layers()

    def is_moe_layer(self, i: int) -> bool:
        """Layer i (MTP module j's block is layer n_layers + j) has a MoE FFN."""
        return self.moe is not None and i >= self.moe.first_k_dense

    def window(self, i: int) -> int | None:
        if self.sliding_window is None:
            return None
        if self.sliding_layers is None or i in self.sliding_layers:
            return self.sliding_window
        return None

    # -- serialization (JSON-safe dict, and back)
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sliding_layers"] = None if self.sliding_layers is None else list(self.sliding_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        require(not unknown, ValueError, f"config: unknown field(s) {unknown}")
        d = dict(d)
        for key, sub in (("rope_scaling", RopeScaling), ("mla", MLAConfig), ("moe", MoEConfig),
                         ("hybrid", HybridConfig)):
            if isinstance(d.get(key), dict):
                d[key] = sub(**d[key])
        if d.get("sliding_layers") is not None:
            d["sliding_layers"] = tuple(d["sliding_layers"])
        return cls(**d)

    def replace(self, **changes) -> ModelConfig:
        return replace(self, **changes)


# ----------------------------------------------------------------------------- naming scheme


def lightning_log_decay(config: ModelConfig, layer: int) -> np.ndarray:
    """MiniMax-01's fixed per-head decay of lightning layer ``layer`` (HF ``get_slope_rate``):
    ``log_decay_h = -(2^(-8/H))^(h+1) * (1 - layer / (L - 1 + 1e-5) + 1e-5)``, h in [0, H)."""
    h, n = config.n_heads, config.n_layers
    base = 1.0 / (2.0 ** (8.0 / h))
    factor = 1.0 - layer / (n - 1 + 1e-5) + 1e-5
    return -(base ** (np.arange(h) + 1.0)) * factor


def _attention_shapes(c: ModelConfig, kind: str) -> dict[str, tuple[int, ...]]:
    d, h, hkv, hd = c.d_model, c.n_heads, c.kv_heads, c.hd
    if kind == "linear":
        return {"wq": (d, h * hd), "wk": (d, h * hd), "wv": (d, h * hd),
                "w_gate": (d, h * hd), "out_norm": (h * hd,), "wo": (h * hd, d)}
    if c.mla is not None:
        m = c.mla
        q_in = m.q_lora_rank or d
        s = {"w_uq": (q_in, h * (m.qk_nope_head_dim + m.qk_rope_head_dim)),
             "w_dkv": (d, m.kv_lora_rank + m.qk_rope_head_dim), "kv_norm": (m.kv_lora_rank,),
             "w_ukv": (m.kv_lora_rank, h * (m.qk_nope_head_dim + m.v_head_dim)),
             "wo": (h * m.v_head_dim, d)}
        if m.q_lora_rank:
            s.update({"w_dq": (d, m.q_lora_rank), "q_norm": (m.q_lora_rank,)})
        return s
    s = {"wq": (d, h * hd), "wk": (d, hkv * hd), "wv": (d, hkv * hd), "wo": (h * hd, d)}
    if c.attention_bias:
        s.update({"bq": (h * hd,), "bk": (hkv * hd,), "bv": (hkv * hd,)})
    if c.qk_norm:
        s.update({"q_norm": (hd,), "k_norm": (hd,)})
    return s


def _ffn_shapes(c: ModelConfig, moe: bool) -> dict[str, tuple[int, ...]]:
    d = c.d_model
    if not moe:
        return {"ffn.w_gate": (d, c.d_ff), "ffn.w_up": (d, c.d_ff), "ffn.w_down": (c.d_ff, d)}
    m = c.moe
    e, f = m.n_experts, m.d_expert
    s = {"moe.router": (d, e), "moe.w_gate": (e, d, f), "moe.w_up": (e, d, f),
         "moe.w_down": (e, f, d)}
    if m.selection_bias:
        s["moe.router_bias"] = (e,)
    if m.d_shared:
        s.update({"moe.shared.w_gate": (d, m.d_shared), "moe.shared.w_up": (d, m.d_shared),
                  "moe.shared.w_down": (m.d_shared, d)})
        if m.shared_gate:
            s["moe.shared_gate"] = (d, 1)
    return s


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in a fixed order. Weights are stored ``(in, out)``
    (the math's ``x @ W``; HF's ``nn.Linear.weight`` is the transpose)."""
    c = config
    shapes: dict[str, tuple[int, ...]] = {"embed": (c.vocab_size, c.d_model)}
    for i, kind in enumerate(c.layer_kinds()):
        p = f"layers.{i}."
        shapes[p + "attn_norm"] = (c.d_model,)
        for n, s in _attention_shapes(c, kind).items():
            shapes[p + "attn." + n] = s
        shapes[p + "ffn_norm"] = (c.d_model,)
        for n, s in _ffn_shapes(c, c.is_moe_layer(i)).items():
            shapes[p + n] = s
    shapes["final_norm"] = (c.d_model,)
    if not c.tie_embeddings:
        shapes["lm_head"] = (c.d_model, c.vocab_size)
    for j in range(c.mtp_depth):  # DeepSeek-V3 multi-token prediction: block = layer L + j
        p = f"mtp.{j}."
        shapes[p + "enorm"] = shapes[p + "hnorm"] = (c.d_model,)
        shapes[p + "eh_proj"] = (2 * c.d_model, c.d_model)
        shapes[p + "attn_norm"] = (c.d_model,)
        for n, s in _attention_shapes(c, "softmax").items():
            shapes[p + "attn." + n] = s
        shapes[p + "ffn_norm"] = (c.d_model,)
        for n, s in _ffn_shapes(c, c.is_moe_layer(c.n_layers + j)).items():
            shapes[p + n] = s
        shapes[p + "final_norm"] = (c.d_model,)
    return shapes


def param_kind(name: str) -> str:
    """"embedding", "norm", "bias", "buffer" (no gradient) or "matrix": what an optimizer's
    weight-decay rule and a sharding plan read off a name."""
    last = name.rsplit(".", 1)[-1]
    if name == "embed":
        return "embedding"
    if last == "router_bias":
        return "buffer"
    if last.endswith("norm"):
        return "norm"
    if last in ("bq", "bk", "bv"):
        return "bias"
    return "matrix"


def trainable(config: ModelConfig) -> tuple[str, ...]:
    """The names that receive gradients (all but buffers), in ``param_shapes`` order."""
    return tuple(n for n in param_shapes(config) if param_kind(n) != "buffer")


def init_params(config: ModelConfig, seed: int = 0, *, std: float = 0.02,
                norm_std: float = 0.0, bias_std: float | None = None) -> dict[str, np.ndarray]:
    """Deterministic float64 parameters: matrices and embeddings N(0, std^2); norms
    1 + N(0, norm_std^2); attention biases and the selection bias N(0, bias_std^2) (default
    ``std``). Tests draw larger ``std`` and ``norm_std`` so that every parameter matters."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in param_shapes(config).items():
        kind = param_kind(name)
        if kind == "norm":
            out[name] = 1.0 + norm_std * rng.standard_normal(shape)
        elif kind in ("bias", "buffer"):
            out[name] = (std if bias_std is None else bias_std) * rng.standard_normal(shape)
        else:
            out[name] = std * rng.standard_normal(shape)
    return out


# ----------------------------------------------------------------------------- arithmetic


def n_params(config: ModelConfig, *, trainable_only: bool = True) -> int:
    names = trainable(config) if trainable_only else tuple(param_shapes(config))
    shapes = param_shapes(config)
    return int(sum(math.prod(shapes[n]) for n in names))


def active_params_per_token(config: ModelConfig) -> int:
    """Parameters one token's forward touches: routed experts count k of E; the embedding
    table counts one row (the head counts whole, tied or not); the MTP modules, which only
    training (and speculative drafting) runs, count nothing."""
    c, total = config, 0
    for name, shape in param_shapes(config).items():
        size = math.prod(shape)
        if name.startswith("mtp."):
            size = 0
        elif name == "embed":
            size = c.d_model if not c.tie_embeddings else size
        elif param_kind(name) == "buffer":
            size = 0
        elif c.moe is not None and name.split(".")[-1] in ("w_gate", "w_up", "w_down") and (
                ".moe.w_" in name):
            size = size * c.moe.top_k // c.moe.n_experts
        total += size
    return int(total)


def kv_cache_bytes_per_token(config: ModelConfig, bytes_per_element: float = 2) -> dict:
    """Cache bytes per token by attention kind, DeepSeek-V2's table (``kv_cache_size``);
    lightning layers hold a fixed (H, d, d) state per sequence, no per-token cache."""
    c = config
    kinds = c.layer_kinds()
    n_soft = sum(k == "softmax" for k in kinds)
    out: dict[str, Any] = {"softmax_layers": n_soft, "linear_layers": len(kinds) - n_soft}
    if n_soft == 0:
        out.update(kind="none", bytes_per_token=0.0)
    elif c.mla is not None:
        s = kv_cache_size("mla", n_layers=n_soft, n_heads=c.n_heads, head_dim=c.hd,
                          kv_lora_rank=c.mla.kv_lora_rank,
                          qk_rope_head_dim=c.mla.qk_rope_head_dim,
                          bytes_per_element=bytes_per_element)
        out.update(kind="mla", bytes_per_token=s.bytes_per_token)
    else:
        kind = "mha" if c.kv_heads == c.n_heads else "mqa" if c.kv_heads == 1 else "gqa"
        s = kv_cache_size(kind, n_layers=n_soft, n_heads=c.n_heads, head_dim=c.hd,
                          n_kv_heads=c.kv_heads, bytes_per_element=bytes_per_element)
        out.update(kind=kind, bytes_per_token=s.bytes_per_token)
    out["linear_state_bytes_per_sequence"] = (
        (len(kinds) - n_soft) * c.n_heads * c.hd * c.hd * 4)  # float32 state
    return out


# ----------------------------------------------------------------------------- presets

PRESETS: dict[str, ModelConfig] = {
    "tiny-llama": ModelConfig(vocab_size=512, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
                              d_ff=344, rope_theta=10000.0, name="tiny-llama"),
    "tiny-moe": ModelConfig(vocab_size=512, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
                            d_ff=344, name="tiny-moe",
                            moe=MoEConfig(n_experts=8, top_k=2, d_expert=96,
                                          norm_topk_prob=True, balance_coef=0.01)),
    "tiny-deepseek": ModelConfig(
        vocab_size=512, d_model=128, n_layers=4, n_heads=4, d_ff=344, name="tiny-deepseek",
        rope_interleaved=True,
        mla=MLAConfig(kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16,
                      v_head_dim=32, q_lora_rank=96),
        moe=MoEConfig(n_experts=8, top_k=2, d_expert=64, d_shared=64, score_func="sigmoid",
                      n_group=4, topk_group=2, routed_scaling_factor=2.5, selection_bias=True,
                      first_k_dense=1, balance_loss="seq", balance_coef=1e-4)),
    "tiny-hybrid": ModelConfig(vocab_size=512, d_model=128, n_layers=4, n_heads=4, d_ff=344,
                               name="tiny-hybrid",
                               hybrid=HybridConfig(linear_per_softmax=3, block_size=16)),
}


def preset(name: str) -> ModelConfig:
    require(name in PRESETS, ValueError,
            f"model: unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]
