"""One rank of the torch data-parallel training checks (torchrun, gloo, 2 or 4 ranks;
``_dp_torch_worker.py ddp|fsdp``). ddp: every rank steps on its own micro-batch with
``data_parallel_train_step`` (DDP's all-reduce of the summed gradients); fsdp: on its own two
micro-batches with ``fsdp_train_step`` (FSDP2's fully_shard: weights all-gathered,
gradients reduce-scattered once, AdamW on each rank's shards). Rank 0 requires the new
parameters, both moments, the loss and the grad norm to equal the one-process ``train_step``
on all the micro-batches: bit for bit for ddp on 2 ranks, where the all-reduce's sum of two
terms is the one process's; otherwise within ``_train_cases.differences``' bound, since the
sums run in another order. Planted steps must differ from it: each rank normalised by its own
token count (the per-micro-batch mean again, across ranks) and, under FSDP, the
reduce-scatter's default mean over the ranks."""

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


def _step(mode: str):
    if mode == "fsdp":
        from lmspec.backends.torch_triton._fsdp import fsdp_train_step
        return fsdp_train_step
    return TS.data_parallel_train_step


def _plants(mode: str, ranks: int) -> dict:
    """Planted bugs, each a context manager: each rank normalised by its own token count;
    under FSDP also the reduce-scatter's default mean over ranks (the loss is already divided
    by the whole batch's count: the ranks' gradients are to be summed)."""
    real_all_reduce = dist.all_reduce

    def local_counts(t, group=None):
        if t.dtype != torch.int64 or t.numel() != 2:
            real_all_reduce(t, group=group)
        else:
            t[1] *= ranks
    out = {"per-rank normalisation": mock.patch.object(dist, "all_reduce", local_counts)}
    if mode == "fsdp":
        from torch.distributed.fsdp import FSDPModule
        out["gradients averaged over ranks"] = mock.patch.object(
            FSDPModule, "set_gradient_divide_factor", lambda self, f: None)
    return out


def run(mode: str, name: str, weighted: bool, rank: int, ranks: int) -> str | None:
    cfg = CONFIGS[name]
    tc = TrainConfig(lr=1e-2, max_grad_norm=0.5, schedule=Schedule("cosine", 2, 10),
                     bias_update_rate=1e-3 if cfg.moe else 0.0)
    params = {n: a.astype(np.float32) for n, a in init_params(cfg, 3).items()}
    opt = init_opt_state(params, cfg)
    per = 2 if mode == "fsdp" else 1  # FSDP: two micro-batches per rank, one reduce-scatter
    batch = _batch(cfg, weighted, ranks * per)
    mine = {k: v[rank * per:(rank + 1) * per] for k, v in batch.items()}
    fn = _step(mode)
    got = fn(params, opt, mine, 3, model_config=cfg, train_config=tc)
    planted = {}
    for what, patch in _plants(mode, ranks).items():
        with patch:
            planted[what] = fn(params, opt, mine, 3, model_config=cfg, train_config=tc)
    if rank:
        return None
    want = TS.train_step(params, opt, batch, 3, model_config=cfg, train_config=tc)
    label = f"{mode} {name}{' weighted' if weighted else ''}"
    if ranks > 2 or mode == "fsdp":  # the sums in another order than the one process's
        naive, ref = sides(params, opt, batch, 3, cfg, tc)
        fails = differences(got, want, naive, ref, cfg)
        fails += [f"the planted {what} was not told apart" for what, bad in planted.items()
                  if not differences(bad, want, naive, ref, cfg)]
        return f"{label}: {'; '.join(fails)}" if fails else None
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
    for what, bad in planted.items():
        if all(np.array_equal(np.asarray(bad[0][k]), np.asarray(want[0][k])) for k in want[0]
               if k in want[1]["m"]):
            return f"{label}: the planted {what} was not told apart"
    return None


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "ddp"
    assert mode in ("ddp", "fsdp"), f"mode: expected ddp or fsdp, got {mode!r}"
    dist.init_process_group("gloo")
    rank, ranks = dist.get_rank(), dist.get_world_size()
    assert ranks > 1, "run with --nproc_per_node=2 or more"
    cases = ([("dense", False), ("moe", True)] if mode == "fsdp" else
             [(n, w) for n in CONFIGS for w in (False, True)])
    fails = [f for f in (run(mode, n, w, rank, ranks) for n, w in cases) if f]
    if rank == 0:
        print("\n".join(f"FAIL {f}" for f in fails) or "OK")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
