"""One rank of the torch data-parallel training check (torchrun, gloo, 2 or 4 ranks): every
rank steps on its own micro-batch with ``data_parallel_train_step``; rank 0 requires the new
parameters, both moments, the loss and the grad norm to equal the one-process ``train_step``
on all the micro-batches (bit for bit on 2 ranks, where the all-reduce's sum of two terms is
the one process's; on more, within ``_train_cases.differences``' bound, since gloo
associates the sum differently), and a planted step that normalises each rank by its own
token count (the per-micro-batch mean again, across ranks) to differ from it."""

from __future__ import annotations

import importlib
import sys
from unittest import mock

import numpy as np
import torch
import torch.distributed as dist
from _train_cases import differences, sides

from lmspec.spec.model import ModelConfig, MoEConfig, init_params
from lmspec.spec.train_step import Schedule, TrainConfig, init_opt_state

TS = importlib.import_module("lmspec.backends.torch_triton.train_step")  # not the function
CONFIGS = {
    "dense": ModelConfig(vocab_size=31, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2,
                         d_ff=24),
    "moe": ModelConfig(vocab_size=31, d_model=16, n_layers=2, n_heads=2, d_ff=24,
                       moe=MoEConfig(n_experts=4, top_k=2, d_expert=8, score_func="sigmoid",
                                     selection_bias=True, balance_coef=0.01)),
}


def _batch(config, weighted: bool, ranks: int) -> dict:
    rng = np.random.default_rng(7)
    tok = rng.integers(0, config.vocab_size, (ranks, 3, 9))
    tg = np.concatenate([tok[..., 1:], np.full((ranks, 3, 1), -100)], -1)
    tg[0, :, :5] = -100  # the ranks hold different token counts
    b = {"tokens": tok, "targets": tg}
    if weighted:
        b["weights"] = rng.choice([-1.5, 0.0, 0.5, 2.0], tok.shape)
    return b


def run(name: str, weighted: bool, rank: int, ranks: int) -> str | None:
    cfg = CONFIGS[name]
    tc = TrainConfig(lr=1e-2, max_grad_norm=0.5, schedule=Schedule("cosine", 2, 10),
                     bias_update_rate=1e-3 if cfg.moe else 0.0)
    params = {n: a.astype(np.float32) for n, a in init_params(cfg, 3).items()}
    opt = init_opt_state(params, cfg)
    batch = _batch(cfg, weighted, ranks)
    mine = {k: v[rank:rank + 1] for k, v in batch.items()}
    got = TS.data_parallel_train_step(params, opt, mine, 3, model_config=cfg, train_config=tc)
    real_all_reduce = dist.all_reduce

    def local_counts(t, group=None):  # the planted bug: each rank keeps its own token count
        if t.dtype != torch.int64 or t.numel() != 2:
            real_all_reduce(t, group=group)
        else:
            t[1] *= ranks
    with mock.patch.object(dist, "all_reduce", local_counts):
        planted = TS.data_parallel_train_step(params, opt, mine, 3, model_config=cfg,
                                              train_config=tc)
    if rank:
        return None
    want = TS.train_step(params, opt, batch, 3, model_config=cfg, train_config=tc)
    label = f"{name}{' weighted' if weighted else ''}"
    if ranks > 2:  # gloo's all-reduce sums in another order than the one process
        naive, ref = sides(params, opt, batch, 3, cfg, tc)
        fails = differences(got, want, naive, ref, cfg)
        return f"{label}: {'; '.join(fails)}" if fails else (
            None if differences(planted, want, naive, ref, cfg) else
            f"{label}: the planted per-rank normalisation was not told apart")
    for what, a, b in (("params", got[0], want[0]), ("m", got[1]["m"], want[1]["m"]),
                       ("v", got[1]["v"], want[1]["v"])):
        for k in b:
            if not np.array_equal(np.asarray(a[k]), np.asarray(b[k])):
                err = float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k]))))
                return f"{label}: {what}[{k!r}] differs from one process by {err:.3g}"
    for k in ("loss", "ce", "grad_norm", "n_tokens"):
        if got[2][k] != want[2][k]:
            return f"{label}: metrics[{k!r}] {got[2][k]} != {want[2][k]}"
    if cfg.moe and not torch.equal(got[2]["loads"], want[2]["loads"]):
        return f"{label}: loads differ"
    if all(np.array_equal(np.asarray(planted[0][k]), np.asarray(want[0][k])) for k in want[0]
           if k in want[1]["m"]):
        return f"{label}: the planted per-rank normalisation was not told apart"
    return None


def main() -> int:
    dist.init_process_group("gloo")
    rank, ranks = dist.get_rank(), dist.get_world_size()
    assert ranks > 1, "run with --nproc_per_node=2 or more"
    fails = [f for f in (run(n, w, rank, ranks) for n in CONFIGS for w in (False, True)) if f]
    if rank == 0:
        print("\n".join(f"FAIL {f}" for f in fails) or "OK")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
