"""The alignment stages behind ``lmspec align sft|dpo|grpo``, on any backend of the registry.

    cfg = AlignConfig(stage="sft", init="runs/tiny", task="reverse", steps=200)
    align(cfg, "runs/sft")                      # then: AlignConfig(stage="grpo", init="runs/sft")

Every stage takes its starting model from an lmspec run folder (``lmspec train`` or an
earlier stage: its latest checkpoint and its ``vocab.json``) and writes the same layout as
``lmspec train``: ``run.json``, ``vocab.json``, ``metrics.jsonl`` (long format) and atomic
``step-NNNNNNNN/`` checkpoints; ``resume`` continues a stopped run bit-identically (every
step's data and samples are a function of the seed and the step alone).

One optimizer step is the spec's ``train_step`` in every stage. SFT is its cross-entropy on
prompt-masked conversations (align/tasks.py); DPO and GRPO are its weighted cross-entropy,
with weights that make its gradient the alignment loss's (align/gradients.py), so that
clipping, AdamW and accumulation are pre-training's. z-loss and the MTP loss are switched
off for those stages (weighted by a negative w they would reward what they penalize).

Evaluation, every ``eval_every`` steps, on held-out prompts never trained on: greedy answers'
mean reward and exact-match rate (every stage), and for DPO the preference accuracy on
held-out pairs (TRL's ``rewards/accuracies``: implicit reward of chosen > rejected; and the
policy's own: log pi(chosen) > log pi(rejected))."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from lmspec import backends
from lmspec.align import tasks as T
from lmspec.align.gradients import (
    dpo_gradients,
    grpo_gradients,
    token_logp,
    token_weights,
)
from lmspec.spec._model_config import ModelConfig, n_params
from lmspec.spec.train_step import Schedule, TrainConfig, init_opt_state
from lmspec.train import checkpoint as ckpt
from lmspec.train.data import Vocabulary
from lmspec.train.loop import (
    Metrics,
    State,
    _progress,
    _takes_segments,
    _to_backend,
    _to_numpy,
    checkpoint_to_resume,
)

STAGES = ("sft", "dpo", "grpo")
# per stage: learning rate, beta (DPO's temperature; GRPO's KL coefficient), loss type
STAGE_DEFAULTS = {"sft": (1e-3, 0.0, None), "dpo": (2e-4, 0.1, "sigmoid"),
                  "grpo": (2e-4, 0.0, "grpo")}
DPO_LOSSES = ("sigmoid", "ipo", "robust")
GRPO_LOSSES = ("grpo", "bnpo", "dr_grpo")


@dataclass(frozen=True)
class AlignConfig:
    """One alignment stage. ``init``: the run folder (or step folder) it starts from; ``ref``:
    DPO's and GRPO's frozen reference model (default ``init``). ``batch_size``: conversations
    (sft), preference pairs (dpo) or prompts (grpo) per step; GRPO samples ``group_size``
    completions per prompt at temperature 1 (the policy itself: its log-probs are the
    sampler's). ``lr``, ``beta``, ``loss_type``: None takes the stage's default
    (STAGE_DEFAULTS)."""

    stage: str
    init: str
    ref: str | None = None
    task: str = "reverse"
    backend: str = "torch_triton"
    steps: int = 100
    batch_size: int = 16
    group_size: int = 8
    lr: float | None = None
    schedule: str = "constant"
    warmup_steps: int = 5
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    beta: float | None = None
    loss_type: str | None = None
    label_smoothing: float = 0.0
    epsilon: float = 0.2
    max_new_tokens: int = 10
    seq_len: int = 64
    eval_every: int = 20
    eval_size: int = 64
    ckpt_every: int = 50
    keep_last: int | None = 2
    log_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage: expected one of {STAGES}, got {self.stage!r}")
        if self.task not in T.TASKS:
            raise ValueError(f"task: expected one of {sorted(T.TASKS)}, got {self.task!r}")
        for n in ("steps", "batch_size", "group_size", "max_new_tokens", "seq_len",
                  "eval_every", "eval_size", "ckpt_every", "log_every"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{n}: expected an integer >= 1, got {v!r}")
        if self.stage == "grpo" and self.group_size < 2:
            raise ValueError(f"group_size: expected >= 2 for GRPO (a group of one has no "
                             f"advantage), got {self.group_size}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule: expected 'constant' or 'cosine', got {self.schedule!r}")
        if not (isinstance(self.warmup_steps, int) and 0 <= self.warmup_steps):
            raise ValueError(f"warmup_steps: expected an integer >= 0, got {self.warmup_steps}")
        if self.schedule == "cosine" and self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps: expected fewer than steps ({self.steps}) for "
                             f"the cosine schedule, got {self.warmup_steps}")
        losses = {"dpo": DPO_LOSSES, "grpo": GRPO_LOSSES}.get(self.stage, (None,))
        if self.loss_type is not None and self.loss_type not in losses:
            raise ValueError(f"loss_type: expected one of {losses} for {self.stage}, "
                             f"got {self.loss_type!r}")
        for n in ("lr", "beta"):
            v = getattr(self, n)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{n}: expected a finite number >= 0, got {v!r}")
        if self.stage == "dpo" and self.beta is not None and self.beta <= 0:
            raise ValueError(f"beta: expected > 0 for DPO, got {self.beta}")

    def resolved(self) -> tuple[float, float, str | None]:
        lr, beta, loss = STAGE_DEFAULTS[self.stage]
        return (lr if self.lr is None else self.lr, beta if self.beta is None else self.beta,
                loss if self.loss_type is None else self.loss_type)

    def train_config(self) -> TrainConfig:
        lr = self.resolved()[0]
        kw: dict[str, Any] = {"kind": self.schedule, "warmup_steps": self.warmup_steps}
        if self.schedule == "cosine":
            kw.update(total_steps=self.steps, min_lr_ratio=0.1)
        return TrainConfig(lr=lr, weight_decay=self.weight_decay,
                           max_grad_norm=self.max_grad_norm, schedule=Schedule(**kw))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlignConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"align config: unknown fields {unknown}")
        return cls(**d)


# ----------------------------------------------------------------------------- models


@dataclass
class Policy:
    """A model of a run folder: config, float32 host weights, vocabulary."""

    config: ModelConfig
    params: dict[str, np.ndarray]
    vocab: Vocabulary
    source: Path


def load_policy(path: str | Path, what: str = "init") -> Policy:
    """The latest checkpoint of a run folder (or the given step folder) and the run's
    vocabulary."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what}: no such folder {path}")
    step = ckpt.latest(path)
    run = path if step is not None else path.parent
    step = step or path
    vocab_file = run / "vocab.json"
    if not vocab_file.exists():
        raise FileNotFoundError(f"{what}: {run} has no vocab.json (expected the folder of an "
                                "`lmspec train` or `lmspec align` run)")
    c = ckpt.load(step)
    params = {n: np.asarray(a, np.float32) for n, a in c.params.items()}
    return Policy(ModelConfig.from_dict(c.model_config), params,
                  Vocabulary.from_json(json.loads(vocab_file.read_text())), step)


# ----------------------------------------------------------------------------- one stage


class _Stage:
    """What the stages share: the data of a step, the step itself, evaluation."""

    def __init__(self, cfg: AlignConfig, b, policy: Policy, ref: Policy | None):
        self.cfg, self.b, self.vocab = cfg, b, policy.vocab
        self.tok = policy.vocab.tokenizer()
        self.eos = policy.vocab.eos_id
        self.lr, self.beta, self.loss_type = cfg.resolved()
        base = policy.config
        self.config = base if cfg.stage == "sft" else base.replace(z_loss=0.0,
                                                                  mtp_loss_weight=0.0)
        self.ref = None if ref is None else {n: b.asarray(a, "float32")
                                             for n, a in ref.params.items()}
        held = T.examples(cfg.task, cfg.eval_size, seed=cfg.seed + 1_000_003)
        self.held_out = held
        self._held_prompts = {e.prompt for e in held}

    # -- data

    def train_examples(self, step: int, n: int) -> list[T.Example]:
        """``n`` examples for ``step``, none of them a held-out prompt."""
        out: list[T.Example] = []
        k = 0
        while len(out) < n:
            for e in T.examples(self.cfg.task, n, seed=(self.cfg.seed, step, k)):
                if e.prompt not in self._held_prompts and len(out) < n:
                    out.append(e)
            k += 1
        return out

    def encode(self, e: T.Example, answer: str | None = None) -> tuple[list[int], list[int]]:
        return T.encode_example(self.tok, e.prompt, e.answer if answer is None else answer,
                                self.eos)

    def generate(self, params_host: dict, prompts: list[list[int]], temperature: float,
                 seeds: list[int]) -> list[list[int]]:
        from lmspec.serve.engine import Engine, SamplingParams

        longest = max(len(p) for p in prompts) + self.cfg.max_new_tokens + 1
        eng = Engine(self.config, params_host, backend=self.cfg.backend, eos_id=self.eos,
                     max_num_seqs=min(len(prompts), 64), max_model_len=longest,
                     max_tokens_per_step=max(256, longest * 4))
        sps = [SamplingParams(max_tokens=self.cfg.max_new_tokens, temperature=temperature,
                              seed=s) for s in seeds]
        return eng.generate(prompts, sps)

    def answer_text(self, ids: list[int]) -> str:
        return self.tok.decode([t for t in ids if t != self.eos])

    # -- steps

    def step(self, state, step: int, fn, tc) -> dict[str, float]:
        return getattr(self, f"_{self.cfg.stage}")(state, step, fn, tc)

    def _train(self, state, fn, tc, batch: dict, step: int) -> dict:
        batch = {k: v[None] for k, v in batch.items()}  # one micro-batch
        state.params, state.opt_state, m = fn(state.params, state.opt_state, batch, step,
                                               model_config=self.config, train_config=tc)
        return m

    def _sft(self, state, step, fn, tc) -> dict[str, float]:
        pairs = [self.encode(e) for e in self.train_examples(step, self.cfg.batch_size)]
        packed = _takes_segments(self.config)
        rows = T.sft_rows(pairs, self.cfg.seq_len, self.eos, pack=packed)
        if not packed:
            rows.pop("segment_ids")
        m = self._train(state, fn, tc, rows, step)
        return {"loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
                "lr": float(m["lr"]), "n_tokens": float(m["n_tokens"])}

    def _weighted(self, state, fn, tc, rows, mask, dlogp, step) -> dict:
        """train_step on the targets of ``mask`` weighted so that its gradient is the
        alignment loss's (module docstring)."""
        return self._train(state, fn, tc, {**rows, "weights": token_weights(mask, dlogp)},
                           step)

    def _dpo_rows(self, examples: list[T.Example], seed):
        rng = np.random.default_rng(seed)
        enc = [(self.encode(e), self.encode(e, T.corrupt(e.answer, rng))) for e in examples]
        prompts = [c[0] for c, _ in enc] * 2
        comps = [c[1] for c, _ in enc] + [r[1] for _, r in enc]
        return T.completion_rows(prompts, comps, self.eos)

    def _dpo_params(self) -> dict:
        return {"beta": self.beta, "loss_type": self.loss_type,
                "label_smoothing": self.cfg.label_smoothing}

    def _dpo(self, state, step, fn, tc) -> dict[str, float]:
        examples = self.train_examples(step, self.cfg.batch_size)
        rows, mask = self._dpo_rows(examples, seed=(self.cfg.seed, step, 7))
        loss, cr, rj, dlogp = dpo_gradients(self.b, state.params, self.ref, self.config,
                                            rows, mask, self._dpo_params())
        m = self._weighted(state, fn, tc, rows, mask, dlogp, step)
        return {"loss": loss, "reward_margin": float(np.mean(cr - rj)),
                "reward_accuracy": float(np.mean(cr > rj)),
                "grad_norm": float(m["grad_norm"]), "lr": float(m["lr"])}

    def _grpo(self, state, step, fn, tc) -> dict[str, float]:
        cfg = self.cfg
        examples = self.train_examples(step, cfg.batch_size)
        g = cfg.group_size
        prompts = [self.encode(e, "")[0] for e in examples for _ in range(g)]
        seeds = np.random.default_rng([cfg.seed, step, 1]).integers(2**31, size=len(prompts))
        comps = self.generate(_to_numpy(self.b, state.params), prompts, 1.0,
                              [int(s) for s in seeds])
        answers = [e.answer for e in examples for _ in range(g)]
        rewards = np.array([T.reward(self.answer_text(c), a) for c, a in zip(comps, answers)])
        rows, mask = T.completion_rows(prompts, comps, self.eos)
        starts = np.array([len(p) - 1 for p in prompts])
        loss, dlogp, logp, ref, win = grpo_gradients(
            self.b, state.params, self.ref if self.beta else None, self.config, rows, mask,
            starts, rewards, cfg.max_new_tokens,
            {"group_size": g, "epsilon": cfg.epsilon, "beta": self.beta,
             "loss_type": self.loss_type})
        m = self._weighted(state, fn, tc, rows, mask, dlogp, step)
        kl = (np.exp(ref - logp) - (ref - logp) - 1) * win
        return {"loss": loss, "reward": float(rewards.mean()),
                "exact": float(np.mean(rewards == 1.0)),
                "kl": float(kl.sum() / max(win.sum(), 1)),
                "completion_len": float(win.sum(1).mean()),
                "grad_norm": float(m["grad_norm"]), "lr": float(m["lr"])}

    # -- evaluation

    def evaluate(self, params) -> dict[str, float]:
        held = self.held_out
        prompts = [self.encode(e, "")[0] for e in held]
        outs = self.generate(_to_numpy(self.b, params), prompts, 0.0, [0] * len(held))
        rewards = np.array([T.reward(self.answer_text(o), e.answer)
                            for o, e in zip(outs, held)])
        got = {"reward": float(rewards.mean()), "exact": float(np.mean(rewards == 1.0))}
        if self.cfg.stage == "dpo":
            rows, _ = self._dpo_rows(held, seed=self.cfg.seed + 99)
            pol = token_logp(self.b, params, self.config, rows).sum(-1)
            ratio = pol - token_logp(self.b, self.ref, self.config, rows).sum(-1)
            p = len(held)  # the implicit rewards' order is the log-ratios' (beta > 0)
            got["reward_accuracy"] = float(np.mean(ratio[:p] > ratio[p:]))
            got["policy_accuracy"] = float(np.mean(pol[:p] > pol[p:]))
        return got


def align(cfg: AlignConfig, out: str | Path, *, resume: bool = False,
          progress: bool | None = None, log: Callable[[str], None] | None = None,
          stop_after: int | None = None) -> dict:
    """Run the stage ``cfg`` into ``out``; returns the summary (the last evaluation's
    metrics, prefixed ``valid_``). ``resume``, ``progress``, ``stop_after``: as
    ``lmspec.train.loop.train``'s."""
    out = Path(out)
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    interactive = sys.stderr.isatty() if progress is None else progress
    b = backends.load(cfg.backend)
    for stem in ("train_step", "model") + {"dpo": ("preference_loss",),
                                           "grpo": ("grpo_loss",)}.get(cfg.stage, ()):
        if not b.has(stem):
            raise ValueError(f"backend: {cfg.backend} implements no {stem}")
    latest = checkpoint_to_resume(out, resume)
    policy = load_policy(cfg.init)
    ref = None if cfg.stage == "sft" else load_policy(cfg.ref or cfg.init, "ref")
    if ref is not None and ref.config != policy.config:
        raise ValueError(f"ref: {ref.source} is another model than init's {policy.source}")
    stage = _Stage(cfg, b, policy, ref)
    tc = cfg.train_config()
    if resume:
        saved = ckpt.load(latest)
        old = AlignConfig.from_dict(saved.extra["align"])
        if replace(old, steps=cfg.steps) != cfg:
            raise ValueError("resume: the align config differs from the checkpoint's (only "
                             f"steps may change): saved {old}, given {cfg}")
        state = State(_to_backend(b, saved.params), _to_backend(b, saved.opt_state),
                       saved.step)
        log(f"resumed {out} at step {state.step} ({latest.name})")
    else:
        out.mkdir(parents=True, exist_ok=True)
        state = State(_to_backend(b, policy.params),
                       _to_backend(b, init_opt_state(policy.params, stage.config)), 0)
        (out / "vocab.json").write_text(json.dumps(policy.vocab.to_json()))
    (out / "run.json").write_text(json.dumps({
        "align": cfg.to_dict(), "model_config": stage.config.to_dict(),
        "n_params": n_params(stage.config), "init": str(policy.source),
        "ref": None if ref is None else str(ref.source),
        "stage_settings": {"lr": stage.lr, "beta": stage.beta,
                           "loss_type": stage.loss_type}}, indent=1))
    log(f"align {cfg.stage} on {cfg.task} with {cfg.backend}: {stage.config.name or 'model'} "
        f"({n_params(stage.config) / 1e6:.2f}M params) from {policy.source}; lr {stage.lr:g}"
        + ("" if cfg.stage == "sft" else f", beta {stage.beta:g}, loss {stage.loss_type}"))
    metrics = Metrics(out / "metrics.jsonl", keep_before=state.step + 1 if resume else 0)
    fn = b.fn("train_step")
    if not resume:
        metrics.write(0, "valid", **stage.evaluate(state.params))
    bar = _progress(interactive, cfg.steps, state.step, label=cfg.stage)
    end = cfg.steps if stop_after is None else min(cfg.steps, state.step + stop_after)
    val: dict[str, float] = {}
    try:
        while state.step < end:
            t0 = time.perf_counter()
            m = stage.step(state, state.step, fn, tc)
            if not math.isfinite(m["loss"]):
                raise FloatingPointError(f"step {state.step}: loss {m['loss']} "
                                         f"(lr {m['lr']:.3g}); lower --lr")
            state.step += 1
            metrics.write(state.step, "train", **m, step_s=time.perf_counter() - t0)
            if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
                val = stage.evaluate(state.params)
                metrics.write(state.step, "valid", **val)
            info = "  ".join(f"{k} {v:.3f}" for k, v in m.items()
                             if k in ("loss", "reward", "reward_accuracy"))
            if val:
                info += "  val " + " ".join(f"{k} {v:.3f}" for k, v in val.items())
            if bar is not None:
                bar.update(bar.task_ids[0], completed=state.step, info=info)
            elif state.step % cfg.log_every == 0 or state.step == end:
                log(f"step {state.step}/{cfg.steps}  {info}")
            if state.step % cfg.ckpt_every == 0 or state.step == cfg.steps:
                ckpt.save(out, state.step, params=_to_numpy(b, state.params),
                          opt_state=_to_numpy(b, state.opt_state),
                          model_config=policy.config.to_dict(), train_config=tc.to_dict(),
                          data_state={"step": state.step}, rng_state={"seed": cfg.seed},
                          extra={"align": cfg.to_dict()}, backend=cfg.backend,
                          keep_last=cfg.keep_last)
    finally:
        if bar is not None:
            bar.stop()
        metrics.close()
    return {"step": state.step, "steps": cfg.steps, "out": str(out),
            **{f"valid_{k}": v for k, v in val.items()}}
