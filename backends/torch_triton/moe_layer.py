"""MoE layer in torch: dispatch sorted by expert, grouped matmul over contiguous slices (on CUDA
the Triton grouped GEMM of kernels/moe.py), weighted index_add combine; capacity by the
slot-priority rule; expert parallelism over torch.distributed (all_to_all_single)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmspec.backends.torch_triton._dispatch import kernel_dtype, on_cuda
from lmspec.spec.moe_layer import check_args, check_range, expert_capacity


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for low precision (rounded once at the output, as a fused kernel); else x's."""
    return torch.promote_types(x.dtype, torch.float32)


def kept_mask(topk_ids: torch.Tensor, n_experts: int, capacity: int | None) -> torch.Tensor:
    """(N, k) bool by the spec's slot-priority rule: rank each assignment among those of its
    expert in (slot, token) order with a stable sort; keep ranks below the capacity."""
    if capacity is None:
        return torch.ones(topk_ids.shape, dtype=torch.bool, device=topk_ids.device)
    flat = topk_ids.t().reshape(-1)  # (k*N,) slot-major: the claiming order
    order = torch.sort(flat, stable=True).indices  # grouped by expert, claiming order inside
    counts = torch.bincount(flat, minlength=n_experts)
    starts = torch.cumsum(counts, 0) - counts  # (E,) first sorted position of each expert
    rank = torch.empty_like(flat)
    rank[order] = torch.arange(flat.numel(), device=flat.device) - starts[flat[order]]
    return (rank < capacity).reshape(topk_ids.shape[1], -1).t()


def _ffn(x: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, wd: torch.Tensor) -> torch.Tensor:
    return (F.silu(x @ wg) * (x @ wu)) @ wd


def grouped_experts(xs: torch.Tensor, counts: list[int], w_gate, w_up, w_down, *,
                    kernel: bool = False, tiles=None) -> torch.Tensor:
    """Rows of ``xs`` (M, D) sorted by expert, ``counts[e]`` rows for expert e: the ragged
    (grouped) product. ``kernel`` (and a kernel dtype): the Triton grouped GEMM, one launch per
    product for all experts (``tiles`` forces its blocks, for tests); else one torch matmul
    chain per non-empty contiguous slice. (torch._grouped_mm
    in torch 2.13 runs forward on CPU only with 16-byte-aligned strides, and its backward
    failed there; a (E, max group, D) padded bmm measured 1.4x slower than these slices at
    N=2048, D=512, E=64, top-8, one thread.)"""
    if kernel and kernel_dtype(xs):
        from lmspec.backends.torch_triton.kernels.moe import grouped_swiglu

        return grouped_swiglu(xs, counts, w_gate, w_up, w_down, tiles=tiles)
    outs, start = [], 0
    for e, n in enumerate(counts):
        if n:
            outs.append(_ffn(xs[start:start + n], w_gate[e], w_up[e], w_down[e]))
        start += n
    return torch.cat(outs) if outs else xs.new_zeros((0, w_down.shape[-1]))


def shared_expert(x, shared_w_gate, shared_w_up, shared_w_down, shared_gate):
    """The shared expert on ``x`` in its compute dtype, gated by sigmoid(x @ shared_gate)."""
    y = _ffn(x, *(w.to(x.dtype) for w in (shared_w_gate, shared_w_up, shared_w_down)))
    if shared_gate is not None:
        y = torch.sigmoid(x @ shared_gate.to(x.dtype)) * y  # (N, 1) gate, Qwen2-MoE
    return y


def combine(xc, topk_ids, topk_weights, kept, w_gate, w_up, w_down, *, kernel: bool = False,
            tiles=None):
    """Sort kept assignments by expert, run the grouped experts, scatter back weighted: (N, D)
    in the compute dtype of ``xc``."""
    n, k = topk_ids.shape
    flat_ids = topk_ids.reshape(-1)
    sel = torch.nonzero(kept.reshape(-1)).squeeze(1)  # kept assignments, token-major
    order = sel[torch.sort(flat_ids[sel], stable=True).indices]  # grouped by expert
    counts = torch.bincount(flat_ids[order], minlength=w_gate.shape[0]).tolist()
    tokens = order // k
    weights = [w.to(xc.dtype) for w in (w_gate, w_up, w_down)]
    wts = topk_weights.reshape(-1)[order].to(xc.dtype)[:, None]
    if not (kernel and kernel_dtype(xc)):
        return _combine_by_slices(xc, tokens, wts, counts, *weights)
    ys = grouped_experts(xc[tokens], counts, *weights, kernel=kernel, tiles=tiles)
    return torch.zeros_like(xc).index_add(0, tokens, wts * ys)  # repeats accumulate


def _combine_by_slices(xc, tokens, wts, counts: list[int], w_gate, w_up, w_down):
    """The torch path: each expert's contiguous slice of the sorted assignments gathered, run
    and added back on its own, so no (N*k, D) copy of the inputs or outputs is ever made (on a
    CPU those passes over memory cost more than the grouping saves)."""
    out, start = torch.zeros_like(xc), 0
    for e, n in enumerate(counts):
        if n:
            rows = tokens[start:start + n]
            y = _ffn(xc[rows], w_gate[e], w_up[e], w_down[e])
            out.index_add_(0, rows, wts[start:start + n] * y)  # repeats accumulate
        start += n
    return out


def moe_layer(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate=None,
              shared_w_up=None, shared_w_down=None, shared_gate=None, *,
              capacity_factor: float | None = None):
    return forward(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate, shared_w_up,
                   shared_w_down, shared_gate, capacity_factor,
                   kernel=on_cuda(x, w_gate, w_up, w_down))


def forward(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate, shared_w_up,
            shared_w_down, shared_gate, capacity_factor: float | None, *, kernel: bool,
            tiles=None):
    """Checks the arguments, then runs the routed experts by the Triton grouped GEMM
    (``kernel``, ``tiles`` forcing its blocks) or the torch slices."""
    check_args(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate, shared_w_up,
               shared_w_down, shared_gate, capacity_factor=capacity_factor)
    n, k = topk_ids.shape
    e = w_gate.shape[0]
    if topk_ids.numel():
        check_range(int(topk_ids.min()), int(topk_ids.max()), e)
    kept = kept_mask(topk_ids, e, expert_capacity(n, k, e, capacity_factor))
    xc = x.to(compute_dtype(x))
    out = combine(xc, topk_ids, topk_weights, kept, w_gate, w_up, w_down, kernel=kernel,
                  tiles=tiles)
    if shared_w_gate is not None:
        out = out + shared_expert(xc, shared_w_gate, shared_w_up, shared_w_down, shared_gate)
    return out.to(x.dtype), kept


# ----------------------------------------------------------------------------- expert parallel


def _global_kept(topk_ids, n_experts: int, capacity_factor, group) -> torch.Tensor:
    """This rank's ``kept`` under the single-process rule over all ranks' tokens in rank order
    (rank 0's tokens first): only per-(rank, slot, expert) counts are exchanged."""
    import torch.distributed as dist

    n, k = topk_ids.shape
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    counts = torch.stack([torch.bincount(topk_ids[:, j], minlength=n_experts)
                          for j in range(k)]) if k else topk_ids.new_zeros((0, n_experts))
    every = [torch.empty_like(counts) for _ in range(world)]
    dist.all_gather(every, counts, group=group)
    every = torch.stack(every)  # (R, k, E)
    n_total = int(every[:, 0].sum()) if k else 0
    capacity = expert_capacity(n_total, k, n_experts, capacity_factor)
    if capacity is None:
        return torch.ones((n, k), dtype=torch.bool, device=topk_ids.device)
    slots = every.sum(0)  # (k, E)
    before = (torch.cumsum(slots, 0) - slots) + (torch.cumsum(every, 0) - every)[rank]  # (k, E)
    kept = torch.empty((n, k), dtype=torch.bool, device=topk_ids.device)
    for j in range(k):
        onehot = F.one_hot(topk_ids[:, j], n_experts)  # (N, E)
        within = (torch.cumsum(onehot, 0) - onehot).gather(1, topk_ids[:, j:j + 1])[:, 0]
        kept[:, j] = before[j, topk_ids[:, j]] + within < capacity
    return kept


def expert_parallel_moe_layer(x, topk_ids, topk_weights, w_gate, w_up, w_down,
                              shared_w_gate=None, shared_w_up=None, shared_w_down=None,
                              shared_gate=None, *, n_experts: int,
                              capacity_factor: float | None = None, group=None):
    """moe_layer with experts sharded over the ranks of a torch.distributed group.

    Each rank passes its own tokens (``x`` (N_r, D), ``topk_ids`` with global ids in [0, E),
    ``topk_weights``) and its own experts: ``w_gate``, ``w_up`` (E/R, D, F), ``w_down``
    (E/R, F, D) hold experts ``rank * E/R`` to ``(rank + 1) * E/R - 1``; the shared expert is
    replicated. Kept assignments travel to their expert's rank by ``all_to_all_single`` (sorted
    by expert, so each destination gets one contiguous block), run there as a grouped product,
    and travel back; the weighted combine is local. Capacity follows the single-process rule
    over all ranks' tokens in rank order. Returns this rank's ``(out, kept)``: the rows the
    single-process layer gives for these tokens. Differentiable (autograd through the
    exchanges).
    """
    import torch.distributed as dist
    from torch.distributed._functional_collectives import all_to_all_single_autograd as a2a

    group = dist.group.WORLD if group is None else group
    world = dist.get_world_size(group)
    if n_experts % world or w_gate.shape[0] != n_experts // world:
        raise ValueError(f"w_gate: expected {n_experts} // {world} experts per rank (E must be "
                         f"a multiple of the world size), got {w_gate.shape[0]}")
    local = n_experts // world
    n, k = topk_ids.shape
    if topk_ids.numel():
        check_range(int(topk_ids.min()), int(topk_ids.max()), n_experts)
    kept = _global_kept(topk_ids, n_experts, capacity_factor, group)
    xc = x.to(compute_dtype(x))
    # dispatch: kept assignments sorted by expert, hence by destination rank
    flat_ids = topk_ids.reshape(-1)
    sel = torch.nonzero(kept.reshape(-1)).squeeze(1)
    order = sel[torch.sort(flat_ids[sel], stable=True).indices]
    send_experts = torch.bincount(flat_ids[order], minlength=n_experts)  # (E,)
    recv_experts = torch.empty_like(send_experts)
    dist.all_to_all_single(recv_experts, send_experts, group=group)  # (R * E/R,) by source
    recv_experts = recv_experts.reshape(world, local)
    send_split = send_experts.reshape(world, local).sum(1).tolist()
    recv_split = recv_experts.sum(1).tolist()
    tokens = order // k
    rows = a2a(xc[tokens], recv_split, send_split, group)
    # received rows: by source rank, then by local expert; regroup by local expert
    expert_of = torch.repeat_interleave(torch.arange(local, device=recv_experts.device)
                                        .repeat(world), recv_experts.reshape(-1))
    by_expert = torch.sort(expert_of, stable=True).indices
    ys = grouped_experts(rows[by_expert], recv_experts.sum(0).tolist(),
                         *(w.to(xc.dtype) for w in (w_gate, w_up, w_down)),
                         kernel=on_cuda(x, w_gate, w_up, w_down))
    ys = torch.empty_like(ys).index_copy(0, by_expert, ys)  # back to arrival order
    back = a2a(ys, send_split, recv_split, group)
    wts = topk_weights.reshape(-1)[order].to(xc.dtype)[:, None]
    out = torch.zeros_like(xc).index_add(0, tokens, wts * back)
    if shared_w_gate is not None:
        out = out + shared_expert(xc, shared_w_gate, shared_w_up, shared_w_down, shared_gate)
    return out.to(x.dtype), kept
