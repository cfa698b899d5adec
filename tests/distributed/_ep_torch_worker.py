"""One rank of the torch expert-parallel check (launched by torchrun, gloo): tokens and experts
sharded over 4 ranks; rank 0 gathers the rows and judges them against the reference."""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.distributed as dist
from _ep_cases import CASES, RANKS, case, cotangent, grad_verdict, verdict

from lmspec.backends.torch_triton.moe_layer import expert_parallel_moe_layer, moe_layer


def _gather(t: torch.Tensor) -> np.ndarray:
    parts = [torch.empty_like(t) for _ in range(RANKS)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts).numpy()


def run(name: str, rank: int) -> str | None:
    c = case(name)
    t = {n: None if a is None else torch.from_numpy(np.asarray(
        a, np.int64 if n == "topk_ids" else np.float32)) for n, a in c.arrays.items()}
    n_tok, n_exp = t["x"].shape[0] // RANKS, t["w_gate"].shape[0] // RANKS
    mine = slice(rank * n_tok, (rank + 1) * n_tok)
    experts = slice(rank * n_exp, (rank + 1) * n_exp)
    local = {n: t[n][mine].clone().requires_grad_() for n in ("x", "topk_weights")}
    local.update({n: t[n][experts].clone().requires_grad_() for n in ("w_gate", "w_up", "w_down")})
    out, kept = expert_parallel_moe_layer(
        local["x"], t["topk_ids"][mine], local["topk_weights"],
        *(local[w] for w in ("w_gate", "w_up", "w_down")),
        *(t[w] for w in ("shared_w_gate", "shared_w_up", "shared_w_down", "shared_gate")),
        n_experts=t["w_gate"].shape[0], **c.params)
    (out * torch.from_numpy(cotangent(name)[mine])).sum().backward()
    grads = {n: _gather(g.grad) for n, g in local.items()}
    out, kept = _gather(out.detach()), _gather(kept)
    if rank:
        return None
    single_out, single_kept = moe_layer(**t, **c.params)
    if not np.array_equal(kept, single_kept.numpy()):
        return f"{name}: kept differs from the single-process layer"
    return (verdict(name, out, kept) or verdict(name, single_out.numpy(), single_kept.numpy())
            or grad_verdict(name, grads))


def main() -> int:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    assert dist.get_world_size() == RANKS, dist.get_world_size()
    problems = [p for p in (run(name, rank) for name in CASES) if p]
    dist.destroy_process_group()
    for p in problems:
        print(f"FAIL {p}")
    if rank == 0 and not problems:
        print(f"OK {len(CASES)} cases")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
