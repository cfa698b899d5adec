"""The training loop behind ``lmspec train``: any backend of the registry, by name, runs the
spec's ``train_step`` on the default corpus (train/data.py); metrics go to long-format JSONL,
checkpoints (train/checkpoint.py) every K steps, and a stopped run resumes bit-identically.

    run = RunConfig(model="tiny-llama", backend="torch_triton", steps=300)
    summary = train(run, "runs/tiny")          # then: train(run, "runs/tiny", resume=True)

The output folder holds ``run.json`` (the RunConfig, the model config, the data's vocabulary
size and unigram entropy), ``metrics.jsonl`` (one row per step and metric:
``{"step", "split", "metric", "value"}``; split "train" or "valid"), ``vocab.json`` (the
tokenizer: the checkpoint's model is usable without the corpus) and ``step-NNNNNNNN/``
checkpoints."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from lmspec import backends
from lmspec.spec import _checkpoint as hf_ckpt
from lmspec.spec._model_config import PRESETS, ModelConfig, init_params, n_params
from lmspec.spec.train_step import Schedule, TrainConfig, init_opt_state
from lmspec.train import checkpoint as ckpt
from lmspec.train import data as D
from lmspec.train.distributed import DataParallel, MeshStep, mesh_problem

SCHEDULES = ("constant", "cosine", "wsd")


@dataclass(frozen=True)
class RunConfig:
    """A training run. ``model``: a preset (``tiny-llama``, ``tiny-moe``, ``tiny-deepseek``,
    ``tiny-hybrid``: their vocabulary becomes the corpus vocabulary's), a ModelConfig JSON
    file (``ModelConfig.to_dict``) or an HF ``config.json``, or an HF checkpoint directory
    (its weights are the start; its vocab_size must cover the corpus vocabulary's ids: the
    corpus is tokenized with lmspec's own vocabulary, not the checkpoint's tokenizer).
    ``batch_size`` rows of ``seq_len`` tokens per micro-batch, ``micro_batches`` per step."""

    model: str = "tiny-llama"
    backend: str = "torch_triton"
    steps: int = 300
    batch_size: int = 16
    micro_batches: int = 1
    seq_len: int = 128
    lr: float = 3e-3
    schedule: str = "cosine"
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    max_grad_norm: float | None = 1.0
    compute_dtype: str = "float32"
    bias_update_rate: float = 0.0
    seed: int = 0
    eval_every: int = 50
    eval_batches: int = 8
    ckpt_every: int = 100
    keep_last: int | None = 2
    log_every: int = 10
    corpus_bytes: int = 2_000_000
    vocab_size: int = 512
    valid_every: int = 20  # document i is held out iff i % valid_every == valid_every - 1

    def __post_init__(self) -> None:
        for n in ("steps", "batch_size", "micro_batches", "seq_len", "eval_every",
                  "eval_batches", "ckpt_every", "log_every", "corpus_bytes", "valid_every"):
            v = getattr(self, n)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{n}: expected an integer >= 1, got {v!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps: expected >= 0, got {self.warmup_steps}")
        if self.schedule != "constant" and self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps: expected fewer than steps ({self.steps}) for "
                             f"the {self.schedule} schedule, got {self.warmup_steps}")
        if not 257 <= self.vocab_size:
            raise ValueError(f"vocab_size: expected >= 257 (256 bytes + EOS), "
                             f"got {self.vocab_size}")

    def train_config(self) -> TrainConfig:
        kw: dict[str, Any] = {"kind": self.schedule, "warmup_steps": self.warmup_steps}
        if self.schedule in ("cosine", "wsd"):
            kw.update(total_steps=self.steps, min_lr_ratio=self.min_lr_ratio)
        if self.schedule == "wsd":
            kw.update(decay_steps=max(1, self.steps // 5))
        return TrainConfig(lr=self.lr, weight_decay=self.weight_decay,
                           max_grad_norm=self.max_grad_norm, schedule=Schedule(**kw),
                           compute_dtype=self.compute_dtype,
                           bias_update_rate=self.bias_update_rate)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"run config: unknown fields {unknown}")
        return cls(**d)


# ----------------------------------------------------------------------------- model


def resolve_model(spec: str, n_vocab: int, seed: int) -> tuple[ModelConfig, dict]:
    """(config, float32 initial weights) for ``RunConfig.model``."""
    if spec in PRESETS:
        config = PRESETS[spec].replace(vocab_size=n_vocab)
        return config, _f32(init_params(config, seed))
    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model: {spec} is a folder without config.json "
                                    "(expected an HF checkpoint directory)")
        config, params = hf_ckpt.load_hf_dir(path)
        _vocab_covers(config, n_vocab, spec)
        return config, _f32(params)
    if path.suffix == ".json":
        if not path.exists():
            raise FileNotFoundError(f"model: no such file {spec}")
        d = json.loads(path.read_text())
        config = hf_ckpt.config_from_hf(d) if "model_type" in d else ModelConfig.from_dict(d)
        _vocab_covers(config, n_vocab, spec)
        return config, _f32(init_params(config, seed))
    raise ValueError(f"model: expected a preset ({', '.join(PRESETS)}), a config .json or an "
                     f"HF checkpoint directory, got {spec!r}")


def _vocab_covers(config: ModelConfig, n_vocab: int, spec: str) -> None:
    if config.vocab_size < n_vocab:
        raise ValueError(f"model: {spec} has vocab_size {config.vocab_size}, fewer than the "
                         f"corpus vocabulary's {n_vocab} ids")


def _f32(params: dict) -> dict[str, np.ndarray]:
    return {n: np.asarray(a, np.float32) for n, a in params.items()}


# ----------------------------------------------------------------------------- metrics


class Metrics:
    """Long-format JSONL, one row per (step, split, metric), flushed per write. On resume
    the rows of steps after the checkpoint are dropped first (they belong to the
    interrupted tail, which is re-run)."""

    def __init__(self, path: Path, keep_before: int | None = None):
        self.path = path
        if keep_before is not None and path.exists():
            rows = [r for r in (json.loads(x) for x in path.read_text().splitlines() if x)
                    if r["step"] < keep_before]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            os.replace(tmp, path)
        self._f = path.open("a")

    def write(self, step: int, split: str, **values: float) -> None:
        for k, v in values.items():
            self._f.write(json.dumps({"step": step, "split": split, "metric": k,
                                      "value": float(v)}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


# ----------------------------------------------------------------------------- the loop


@dataclass
class State:
    """What a step changes: backend arrays of weights and moments, and the step count."""

    params: dict
    opt_state: dict
    step: int


def _to_backend(b, tree: dict) -> dict:
    return {k: (_to_backend(b, v) if isinstance(v, dict) else b.asarray(v, "float32"))
            for k, v in tree.items()}


def _to_numpy(b, tree: dict) -> dict:
    return {k: (_to_numpy(b, v) if isinstance(v, dict) else
                np.asarray(b.to_numpy(v), np.float32)) for k, v in tree.items()}


def evaluate(b, params, config: ModelConfig, rows: dict[str, np.ndarray], batch_size: int,
             max_batches: int, compute_dtype: str = "float32") -> float:
    """Mean cross-entropy (nats/token) of the backend's model over the first
    ``max_batches`` batches of ``rows``, weighted by their valid targets."""
    host = _to_numpy(b, params)
    p = {n: b.asarray(a, compute_dtype) for n, a in host.items()}
    total, count = 0.0, 0
    for i, batch in enumerate(D.in_order(rows, batch_size)):
        if i == max_batches:
            break
        n = int((batch["targets"] != D.IGNORE_INDEX).sum())
        if n == 0:
            continue
        seg = batch["segment_ids"] if _takes_segments(config) else None
        _, metrics = b.fn("model_loss")(p, batch["tokens"], batch["targets"],
                                        segment_ids=seg, config=config)
        total += float(metrics["ce"]) * n
        count += n
    return total / count if count else math.nan


def _takes_segments(config: ModelConfig) -> bool:
    """spec/model.py rejects segment ids on models with MLA or lightning layers."""
    return config.mla is None and "linear" not in config.layer_kinds()


def _progress(enabled: bool, total: int, start: int, label: str = "train"):
    """A rich progress bar (step, loss, tokens/s, lr, ETA) on a terminal; None elsewhere."""
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
    bar.start()
    bar.add_task(label, total=total, completed=start, info="")
    return bar


def checkpoint_to_resume(out: Path, resume: bool) -> Path | None:
    """The latest checkpoint in ``out`` when resuming; None for a fresh run. A fresh run into
    a folder that holds checkpoints, or a resume without one, is refused (nothing is
    overwritten)."""
    latest = ckpt.latest(out) if out.exists() else None
    if latest is not None and not resume:
        raise FileExistsError(f"out: {out} already holds checkpoints (latest {latest.name}); "
                              "pass resume=True (--resume) or choose another folder")
    if resume and latest is None:
        raise FileNotFoundError(f"out: no checkpoint to resume from in {out}")
    return latest


def train(run: RunConfig, out: str | Path, *, resume: bool = False,
          progress: bool | None = None, log: Callable[[str], None] | None = None,
          cache_dir: str | Path | None = None, stop_after: int | None = None,
          mesh: dict[str, int] | None = None) -> dict:
    """Train ``run`` into ``out``; returns the summary (also the last line of the log).

    ``resume``: continue from the latest checkpoint in ``out`` (its run config must equal
    ``run`` but for ``steps``); without it, ``out`` must not hold checkpoints already.
    ``progress``: a progress bar (default: when stderr is a terminal; else a line every
    ``log_every`` steps through ``log``). ``stop_after``: leave after this many steps of
    this call, as an interrupted run would (for tests and time-boxed runs). ``mesh``:
    ``{"data": D, "model": M}``, jax_xla's step on a mesh of D x M devices (train.distributed;
    the run's numbers equal the one-device run's to float32 summation order, not bit for
    bit)."""
    out = Path(out)
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    interactive = sys.stderr.isatty() if progress is None else progress
    b = backends.load(run.backend)
    if not b.has("train_step"):
        raise ValueError(f"backend: {run.backend} implements no train_step")
    dp = DataParallel.from_env(run)  # under torchrun: this process's share of each step
    if mesh is not None:
        problem = mesh_problem(run.backend, mesh, run.batch_size)
        if problem:
            raise ValueError(problem)
        if dp is not None:
            raise ValueError("mesh: a mesh run is one process (not under torchrun)")
        mesh = MeshStep.build(mesh)
    if dp is not None and dp.rank:
        log, interactive = (lambda s: None), False  # rank 0 logs, evaluates and saves
    latest = checkpoint_to_resume(out, resume)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    if cache_dir is None:
        cache_dir = os.environ.get("LMSPEC_TRAIN_CACHE") or out / "cache"
    if dp is not None and dp.rank:
        dp.barrier()  # rank 0 builds the data cache first; the others then read it
    data = D.default_data(run.seq_len, vocab_size=run.vocab_size, max_bytes=run.corpus_bytes,
                          vocab_bytes=min(run.corpus_bytes, 1_000_000), every=run.valid_every,
                          cache_dir=cache_dir)
    if dp is not None and not dp.rank:
        dp.barrier()
    tc = run.train_config()
    batches = D.Batches(data.train, run.batch_size, run.micro_batches, seed=run.seed)
    if resume:
        saved = ckpt.load(latest)
        old = RunConfig.from_dict(saved.extra["run"])
        if replace(old, steps=run.steps) != run:
            raise ValueError("resume: the run config differs from the checkpoint's (only "
                             f"steps may change): saved {old}, given {run}")
        config = ModelConfig.from_dict(saved.model_config)
        params, opt, step = saved.params, saved.opt_state, saved.step
        batches.load_state_dict(saved.data_state)
        log(f"resumed {out} at step {step} ({latest.name})")
    else:
        config, params = resolve_model(run.model, data.vocab.n_vocab, run.seed)
        opt, step = init_opt_state(params, config), 0
    lead = dp is None or not dp.rank
    if lead and not resume:
        (out / "vocab.json").write_text(json.dumps(data.vocab.to_json()))
    if lead:
        _write_run_json(out, run, config, data)
    log(f"{run.backend}: {config.name or run.model}, {n_params(config) / 1e6:.2f}M params, "
        f"{len(data.train['tokens'])} train rows of {run.seq_len} tokens, vocabulary "
        f"{data.vocab.n_vocab}, unigram entropy {data.entropy:.3f} nats/token "
        f"(data ready in {time.perf_counter() - t0:.1f} s)")

    metrics = (Metrics(out / "metrics.jsonl", keep_before=step + 1 if resume else 0) if lead
               else _NoMetrics())
    if mesh is not None:
        log(mesh.describe())
    if dp is not None:
        log(f"data-parallel: {dp.world} processes, {run.micro_batches // dp.world} "
            f"micro-batch(es) of {run.batch_size} rows each per step")
    if not resume:
        metrics.write(0, "train", unigram_entropy=data.entropy)
    packed = _takes_segments(config)
    if not packed:
        log("note: MLA and lightning attention take no segment ids (spec/model.py): packed "
            "rows attend across document boundaries here (targets never cross them)")
    state = State(_to_backend(b, params), _to_backend(b, opt), step)
    fn = dp.step if dp is not None else mesh.step if mesh is not None else b.fn("train_step")
    bar = _progress(interactive, run.steps, step)
    end = run.steps if stop_after is None else min(run.steps, step + stop_after)
    val = math.nan
    tokens_seen, t_start = 0, time.perf_counter()
    try:
        while state.step < end:
            batch = next(batches)
            if not packed:
                batch = {k: v for k, v in batch.items() if k != "segment_ids"}
            t_step = time.perf_counter()
            state.params, state.opt_state, m = fn(state.params, state.opt_state, batch,
                                                   state.step, model_config=config,
                                                   train_config=tc)
            loss = float(m["loss"])  # waits for the step
            dt = time.perf_counter() - t_step
            if not math.isfinite(loss):
                raise FloatingPointError(f"step {state.step}: loss {loss} (lr {m['lr']:.3g});"
                                         " lower --lr or raise --warmup")
            n_tok = int(m["n_tokens"])
            tokens_seen += n_tok
            state.step += 1
            metrics.write(state.step, "train", loss=loss, ce=float(m["ce"]),
                          grad_norm=float(m["grad_norm"]), lr=float(m["lr"]),
                          tokens_per_s=n_tok / dt)
            if lead and (state.step % run.eval_every == 0 or state.step == run.steps):
                val = evaluate(b, state.params, config, data.valid, run.batch_size,
                               run.eval_batches, run.compute_dtype)
                metrics.write(state.step, "valid", loss=val)
            rate = tokens_seen / (time.perf_counter() - t_start)
            shown = "-" if math.isnan(val) else f"{val:.3f}"
            info = (f"loss {loss:.3f}  val {shown}  {rate:,.0f} tok/s  "
                    f"lr {float(m['lr']):.2e}")
            if bar is not None:
                bar.update(bar.task_ids[0], completed=state.step, info=info)
            elif state.step % run.log_every == 0 or state.step == end:
                log(f"step {state.step}/{run.steps}  {info}")
            if lead and (state.step % run.ckpt_every == 0 or state.step == run.steps):
                _save(out, b, state, config, tc, run, batches)
    finally:
        if bar is not None:
            bar.stop()
        metrics.close()
        if dp is not None:
            dp.close()
    summary = {"step": state.step, "steps": run.steps, "val_loss": val,
               "unigram_entropy": data.entropy, "tokens": tokens_seen,
               "tokens_per_s": tokens_seen / max(time.perf_counter() - t_start, 1e-9),
               "out": str(out)}
    if state.step == run.steps:
        log(f"done: validation loss {val:.3f} nats/token against the corpus' unigram "
            f"entropy {data.entropy:.3f} ({'below' if val < data.entropy else 'NOT below'})")
    return summary


def _write_run_json(out: Path, run: RunConfig, config: ModelConfig, data) -> None:
    (out / "run.json").write_text(json.dumps({
        "run": run.to_dict(), "model_config": config.to_dict(),
        "n_params": n_params(config), "n_vocab": data.vocab.n_vocab,
        "unigram_entropy": data.entropy, "train_rows": len(data.train["tokens"]),
        "valid_rows": len(data.valid["tokens"])}, indent=1))


class _NoMetrics:
    """The metrics of a rank other than 0: written by rank 0 only."""

    def write(self, *args, **kw) -> None:
        pass

    def close(self) -> None:
        pass


def _save(out: Path, b, state: State, config: ModelConfig, tc: TrainConfig, run: RunConfig,
          batches: D.Batches) -> Path:
    return ckpt.save(out, state.step, params=_to_numpy(b, state.params),
                     opt_state=_to_numpy(b, state.opt_state), model_config=config.to_dict(),
                     train_config=tc.to_dict(), data_state=batches.state_dict(),
                     rng_state={"seed": run.seed}, extra={"run": run.to_dict()},
                     backend=run.backend, keep_last=run.keep_last)
