"""One training step as an explicit state transition: gradient accumulation over micro-batches
normalised by the whole batch's token count, global-norm clipping, AdamW with PyTorch's
semantics (and optax's ``eps_root``), a learning-rate schedule, master weights in float32 with
the model computed in a lower dtype, and DeepSeek-V3's aux-loss-free bias update."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

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
from lmspec.spec.model import (
    IGNORE_INDEX,
    ModelConfig,
    check_weights,
    init_params,
    model_configs,
    param_kind,
    param_shapes,
    trainable,
)

SCHEDULES = ("constant", "cosine", "wsd")
DECAY_RULES = ("all", "matrices")
COMPUTE_DTYPES = ("float64", "float32", "bfloat16")


@dataclass(frozen=True)
class Schedule:
    """The learning rate of optimizer step ``s`` (0 for the first step), peak ``lr``::

        warmup (s < warmup_steps):  lr * (s + 1) / warmup_steps
        constant:                   lr
        cosine:  floor + (lr - floor) * (1 + cos(pi * p)) / 2,
                 p = min(1, (s - warmup_steps) / max(1, total_steps - warmup_steps))
        wsd:     lr until s < total_steps - decay_steps, then lr - (lr - floor) * d(p),
                 p = min(1, (s - (total_steps - decay_steps) + 1) / decay_steps),
                 d(p) = p ("linear") or sqrt(p) ("sqrt": MiniCPM's 1 - sqrt cooldown)

    with ``floor = min_lr_ratio * lr``. Step 0's rate is ``lr / warmup_steps`` with warmup
    (never 0, unlike HF's ``get_cosine_schedule_with_warmup``, whose first optimizer step
    runs at lr 0), and ``lr`` without. Cosine reaches the floor at s = total_steps and stays
    there; WSD reaches it at its last step, s = total_steps - 1."""

    kind: str = "constant"
    warmup_steps: int = 0
    total_steps: int | None = None
    min_lr_ratio: float = 0.0
    decay_steps: int | None = None
    decay_shape: str = "linear"

    def __post_init__(self) -> None:
        require(self.kind in SCHEDULES, ValueError,
                f"schedule.kind: expected one of {SCHEDULES}, got {self.kind!r}")
        require(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, ValueError,
                f"schedule.warmup_steps: expected an integer >= 0, got {self.warmup_steps!r}")
        require(0.0 <= self.min_lr_ratio <= 1.0, ValueError,
                f"schedule.min_lr_ratio: expected in [0, 1], got {self.min_lr_ratio}")
        require(self.decay_shape in ("linear", "sqrt"), ValueError,
                f"schedule.decay_shape: expected 'linear' or 'sqrt', got {self.decay_shape!r}")
        if self.kind != "constant":
            require(isinstance(self.total_steps, int) and self.total_steps > self.warmup_steps,
                    ValueError, f"schedule.total_steps: expected an integer > warmup_steps "
                    f"for {self.kind}, got {self.total_steps!r}")
        if self.kind == "wsd":
            d = self.decay_steps
            require(isinstance(d, int) and 1 <= d <= self.total_steps - self.warmup_steps,
                    ValueError, f"schedule.decay_steps: expected an integer in [1, "
                    f"total_steps - warmup_steps] for wsd, got {d!r}")


def lr_at(step: int, lr: float, schedule: Schedule) -> float:
    """The learning rate of optimizer step ``step`` (see Schedule), in float64."""
    s, sc = int(step), schedule
    require(s >= 0, ValueError, f"step: expected >= 0, got {step}")
    if s < sc.warmup_steps:
        return lr * (s + 1) / sc.warmup_steps
    floor = sc.min_lr_ratio * lr
    if sc.kind == "cosine":
        p = min(1.0, (s - sc.warmup_steps) / max(1, sc.total_steps - sc.warmup_steps))
        return floor + (lr - floor) * (1.0 + math.cos(math.pi * p)) / 2.0
    if sc.kind == "wsd":
        start = sc.total_steps - sc.decay_steps
        if s < start:
            return lr
        p = min(1.0, (s - start + 1) / sc.decay_steps)
        return lr - (lr - floor) * (p if sc.decay_shape == "linear" else math.sqrt(p))
    return lr


@dataclass(frozen=True)
class TrainConfig:
    """AdamW (torch.optim.AdamW's semantics), clipping, schedule and precision of a step.

    ``decay_rule``: "all" decays every trainable parameter (torch's default with one param
    group); "matrices" decays only ``param_kind == "matrix"`` names (no decay on norms,
    biases and the embedding; the untied lm_head is a matrix). ``eps_root`` is optax's
    (inside the root), ``eps`` torch's (outside). ``compute_dtype``: the dtype the model's
    forward and backward run in (the master weights, moments and accumulated gradients stay
    float32, float64 in the reference). ``bias_update_rate``: DeepSeek-V3's gamma for the
    selection bias of MoE routers (0: no update)."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    eps_root: float = 0.0
    weight_decay: float = 0.1
    decay_rule: str = "matrices"
    max_grad_norm: float | None = 1.0
    schedule: Schedule = field(default_factory=Schedule)
    compute_dtype: str = "float32"
    bias_update_rate: float = 0.0

    def __post_init__(self) -> None:
        require(self.lr >= 0, ValueError, f"lr: expected >= 0, got {self.lr}")
        for n in ("beta1", "beta2"):
            b = getattr(self, n)
            require(0.0 <= b < 1.0, ValueError, f"{n}: expected in [0, 1), got {b}")
        require(self.eps >= 0 and self.eps_root >= 0, ValueError,
                f"eps, eps_root: expected >= 0, got {self.eps}, {self.eps_root}")
        require(self.eps > 0 or self.eps_root > 0, ValueError,
                "eps, eps_root: expected one of them > 0 (else 0 / 0 where v is 0)")
        require(self.weight_decay >= 0, ValueError,
                f"weight_decay: expected >= 0, got {self.weight_decay}")
        require(self.decay_rule in DECAY_RULES, ValueError,
                f"decay_rule: expected one of {DECAY_RULES}, got {self.decay_rule!r}")
        require(self.max_grad_norm is None or self.max_grad_norm > 0, ValueError,
                f"max_grad_norm: expected > 0 or None, got {self.max_grad_norm}")
        require(isinstance(self.schedule, Schedule), TypeError,
                "schedule: expected a lmspec.spec.train_step.Schedule")
        require(self.compute_dtype in COMPUTE_DTYPES, ValueError,
                f"compute_dtype: expected one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        require(self.bias_update_rate >= 0, ValueError,
                f"bias_update_rate: expected >= 0, got {self.bias_update_rate}")

    def decays(self, name: str) -> bool:
        return self.decay_rule == "all" or param_kind(name) == "matrix"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        return cls(**{**d, "schedule": Schedule(**d.get("schedule", {}))})


def init_opt_state(params, model_config: ModelConfig) -> dict[str, dict[str, np.ndarray]]:
    """AdamW's state before step 0: ``{"m": {name: 0}, "v": {name: 0}}`` over
    ``trainable(model_config)``, float32 (the reference's in float64)."""
    return {k: {n: np.zeros(np.shape(params[n]), np.float32) for n in trainable(model_config)}
            for k in ("m", "v")}


def moe_bias_names(config: ModelConfig) -> list[str]:
    """The router-bias buffers in the order of ``model_loss``'s ``metrics["loads"]`` rows
    (the main stack's MoE layers, then the MTP modules')."""
    if config.moe is None or not config.moe.selection_bias:
        return []
    main = [f"layers.{i}." for i in range(config.n_layers) if config.is_moe_layer(i)]
    mtp = [f"mtp.{j}." for j in range(config.mtp_depth)
           if config.is_moe_layer(config.n_layers + j)]
    return [p + "moe.router_bias" for p in main + mtp]


def train_step(params, opt_state, batch, step: int, *, model_config: ModelConfig,
               train_config: TrainConfig):
    """One optimizer step; returns ``(params', opt_state', metrics)``.

    Inputs: ``params`` the master weights, every name of ``param_shapes(model_config)``,
    float32 (float64 in the reference); ``opt_state`` as ``init_opt_state`` or an earlier
    step's; ``batch`` a mapping with ``tokens`` and ``targets`` of shape (A, B, T) (A
    micro-batches of B rows) and optionally ``segment_ids`` and ``positions`` of that shape
    and ``weights``, a real float array of that shape (per-target loss weights, passed to
    ``model_grad`` per micro-batch: see ``model_loss``; alignment losses are such weights);
    ``step`` the number of optimizer steps already taken (0 first). Inputs are not modified.

    Math, with c = compute_dtype, ``cast_c`` rounding to it, and micro-batch a::

        n      = number of targets != IGNORE_INDEX over all A micro-batches
        P_c    = {name: cast_c(p)}                    (buffers too)
        cfg_a  = model_config with moe.balance_coef and moe.router_z_coef divided by A
        g      = sum_a float32(model_grad(P_c, batch_a, config=cfg_a, n_tokens=n,
                                          weights=weights_a).grads)
        loss   = sum_a that loss                      (= the whole batch's CE + mean balance)
        norm   = sqrt(sum over every trainable name of sum(g**2))       (float32)
        g      = g * min(1, max_grad_norm / (norm + 1e-6))   (torch's clip_grad_norm_)
        lr_t   = lr_at(step, lr, schedule);  t = step + 1
        m      = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g**2
        p      = p * (1 - lr_t * weight_decay * decays(name))
                 - lr_t * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t) + eps_root) + eps)

    so that the cross-entropy (and MTP) terms of A micro-batches of any sizes sum to those of
    the whole batch (1x8 == 8x1 == 2x4), never a mean of per-micro-batch means; the balance
    terms, which are not additive over tokens, are the mean of the micro-batches' own. Then,
    with bias_update_rate > 0 and a selection bias, each router bias ``b`` (moe_bias_names)
    moves by ``moe_bias_update(b, ids, gamma=bias_update_rate)`` with the step's assignments
    of every micro-batch (loads summed): ``b += gamma * sign(N k / E - load)``.

    metrics: "loss", "ce", "balance", "mtp" (sums over micro-batches), "grad_norm" (before
    clipping), "clip" (the factor), "lr" (lr_t), "n_tokens" (n), "loads" ((n_moe, E)).

    Rejected (ValueError naming the argument): batch arrays not (A, B, T) of one shape, or
    float tokens/targets/segment_ids/positions or integer weights (TypeError), non-finite
    weights; a missing or extra parameter or moment; step < 0.
    """
    check_args(params, opt_state, batch, step, model_config=model_config,
               train_config=train_config)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


BATCH_KEYS = ("tokens", "targets", "segment_ids", "positions", "weights")
INDEX_KEYS = BATCH_KEYS[:4]  # the integer ones


def check_args(params, opt_state, batch, step, *, model_config, train_config) -> None:
    require(isinstance(model_config, ModelConfig), TypeError,
            "model_config: expected a lmspec.spec.model.ModelConfig")
    require(isinstance(train_config, TrainConfig), TypeError,
            "train_config: expected a lmspec.spec.train_step.TrainConfig")
    require(isinstance(step, (int, np.integer)) and step >= 0, ValueError,
            f"step: expected an integer >= 0, got {step!r}")
    shapes = param_shapes(model_config)
    missing = sorted(set(shapes) - set(params))
    require(not missing, ValueError, f"params: missing {missing[:4]}")
    extra = sorted(set(params) - set(shapes))
    require(not extra, ValueError, f"params: unexpected {extra[:4]}")
    require(isinstance(opt_state, dict) and {"m", "v"} <= set(opt_state), ValueError,
            "opt_state: expected a mapping with 'm' and 'v' (see init_opt_state)")
    names = set(trainable(model_config))
    for k in ("m", "v"):
        require(set(opt_state[k]) == names, ValueError,
                f"opt_state[{k!r}]: expected the trainable names of the model")
        for n in names:
            require(shape_of(opt_state[k][n]) == shapes[n], ValueError,
                    f"opt_state[{k!r}][{n!r}]: expected shape {shapes[n]}, got "
                    f"{shape_of(opt_state[k][n])}")
    unknown = sorted(set(batch) - set(BATCH_KEYS))
    require(not unknown, ValueError, f"batch: unknown keys {unknown}; expected {BATCH_KEYS}")
    for k in ("tokens", "targets"):
        require(k in batch, ValueError, f"batch: missing {k!r}")
    ts = shape_of(batch["tokens"])
    require(len(ts) == 3, ValueError, f"batch['tokens']: expected shape (A, B, T), got {ts}")
    for k in BATCH_KEYS:
        if batch.get(k) is not None:
            require(shape_of(batch[k]) == ts, ValueError,
                    f"batch[{k!r}]: expected shape {ts}, got {shape_of(batch[k])}")
            if k in INDEX_KEYS:
                require(is_integer_array(batch[k]), TypeError,
                        f"batch[{k!r}]: expected an integer array")
    check_weights(batch.get("weights"), ts, "batch['weights']")


def n_valid(batch) -> int:
    return int(np.sum(np.asarray(batch["targets"]) != IGNORE_INDEX))


def micro_config(model_config: ModelConfig, a: int) -> ModelConfig:
    """cfg_a of the math: the balance and router z coefficients divided by the micro-batch
    count (the mean of the micro-batches' own terms)."""
    m = model_config.moe
    if m is None or a == 1 or not (m.balance_coef or m.router_z_coef):
        return model_config
    return model_config.replace(moe=replace(m, balance_coef=m.balance_coef / a,
                                            router_z_coef=m.router_z_coef / a))


def micro_batch(batch, a: int) -> dict:
    """Micro-batch a of the batch: the model's (B, T) arguments."""
    return {k: (None if batch.get(k) is None else host(batch[k])[a])
            for k in BATCH_KEYS}


def clip_factor(norm: float, max_grad_norm: float | None) -> float:
    return 1.0 if max_grad_norm is None else min(1.0, max_grad_norm / (norm + 1e-6))


# ----------------------------------------------------------------------------- strategies


@st.composite
def train_configs(draw) -> TrainConfig:
    kind = draw(st.sampled_from(SCHEDULES))
    warm = draw(st.sampled_from((0, 3)))
    sched = Schedule(kind, warm, None if kind == "constant" else warm + 10,
                     draw(st.sampled_from((0.0, 0.1))),
                     decay_steps=4 if kind == "wsd" else None)
    return TrainConfig(
        lr=draw(st.sampled_from((1e-3, 1e-2))), beta1=draw(st.sampled_from((0.9, 0.0))),
        beta2=draw(st.sampled_from((0.95, 0.999))),
        eps=draw(st.sampled_from((1e-8, 1e-6))), eps_root=draw(st.sampled_from((0.0, 1e-12))),
        weight_decay=draw(st.sampled_from((0.1, 0.0))),
        decay_rule=draw(st.sampled_from(DECAY_RULES)),
        max_grad_norm=draw(st.sampled_from((1.0, None, 1e-2))), schedule=sched,
        bias_update_rate=draw(st.sampled_from((0.0, 1e-3))))


# exact in every dtype, both signs, zero (a target that counts in n but not in the loss)
WEIGHT_VALUES = np.array([-1.5, -0.5, 0.0, 0.25, 1.0, 2.0])


@st.composite
def train_cases(draw, family: str | None = None) -> Case:
    """A tiny model, an (A, B, T) batch whose micro-batches hold different token counts, a
    train config and a step; the master weights and moments come from ``case_state`` (drawn
    from the case's seed: the case stays small to print and to replay)."""
    config = draw(model_configs(family))
    seed = draw(S.seeds())
    rng = np.random.default_rng(seed)
    a, b, t = (draw(st.sampled_from(s)) for s in ((2, 1, 3), (1, 2), (4, 1, 6)))
    tokens = rng.integers(0, config.vocab_size, (a, b, t))
    targets = np.concatenate([tokens[..., 1:], np.full((a, b, 1), IGNORE_INDEX)], -1)
    drop = rng.random((a, b, t)) < draw(st.sampled_from((0.0, 0.5)))  # uneven counts
    fresh = draw(st.booleans())
    arrays = {"tokens": tokens, "targets": np.where(drop, IGNORE_INDEX, targets)}
    if draw(st.booleans()):  # per-target weights as alignment losses make them: any sign
        arrays["weights"] = rng.choice(WEIGHT_VALUES, (a, b, t))
    return Case(arrays,
                {"config": config, "train": draw(train_configs()), "seed": seed,
                 "std": draw(st.sampled_from((0.3, 1.0))), "fresh": fresh,
                 "step": 0 if fresh else draw(st.sampled_from((1, 5, 12)))})


def case_state(case: Case) -> tuple[dict[str, np.ndarray], dict]:
    """(float32 master weights, moments) of a train case: zero moments when ``fresh``, else
    those of a run in progress (m ~ N(0, 0.1^2), v ~ U(0, 0.01))."""
    q = case.params
    config, seed = q["config"], q["seed"]
    params = {n: a.astype(np.float32) for n, a in
              init_params(config, seed, std=q["std"], norm_std=0.3).items()}
    rng = np.random.default_rng(seed + 1)
    names = trainable(config)
    if q["fresh"]:
        return params, init_opt_state(params, config)
    m = {n: (rng.standard_normal(params[n].shape) * 0.1).astype(np.float32) for n in names}
    v = {n: (rng.random(params[n].shape) * 0.01).astype(np.float32) for n in names}
    return params, {"m": m, "v": v}


def _bad(**change):
    def build():
        config = ModelConfig(vocab_size=7, d_model=4, n_layers=1, n_heads=2, d_ff=3)
        params = {n: a.astype(np.float32) for n, a in init_params(config, 0).items()}
        batch = {"tokens": np.zeros((1, 1, 3), np.int64), "targets": np.zeros((1, 1, 3),
                                                                              np.int64)}
        kw = {"params": params, "opt_state": init_opt_state(params, config), "batch": batch,
              "step": 0, "model_config": config, "train_config": TrainConfig()}
        for k, v in change.items():
            kw[k] = v(kw) if callable(v) else v
        return {}, kw
    return build


COMPONENT = Component(
    stem="train_step",
    inputs=("tokens", "targets"),
    outputs=("params", "opt_state", "metrics"),
    integer_inputs=("tokens", "targets"),
    cases=train_cases,
    errors=(
        ErrorCase("a (B, T) batch", _bad(batch=lambda kw: {
            k: v[0] for k, v in kw["batch"].items()}), ValueError, r"batch\['tokens'\]"),
        ErrorCase("float targets", _bad(batch=lambda kw: {
            **kw["batch"], "targets": np.zeros((1, 1, 3))}), TypeError, r"batch\['targets'\]"),
        ErrorCase("integer weights", _bad(batch=lambda kw: {
            **kw["batch"], "weights": np.ones((1, 1, 3), np.int64)}), TypeError,
                  r"batch\['weights'\]"),
        ErrorCase("a NaN weight", _bad(batch=lambda kw: {
            **kw["batch"], "weights": np.full((1, 1, 3), np.nan)}), ValueError,
                  r"batch\['weights'\]"),
        ErrorCase("a missing moment", _bad(opt_state=lambda kw: {
            "m": {}, "v": kw["opt_state"]["v"]}), ValueError, r"opt_state\['m'\]"),
        ErrorCase("a negative step", _bad(step=-1), ValueError, r"step"),
    ),
    summary="One AdamW step: accumulation by whole-batch tokens, global clipping, schedules",
)
