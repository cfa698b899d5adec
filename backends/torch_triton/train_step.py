"""One training step (spec/train_step.py): this backend's model gradients per micro-batch in
the compute dtype, accumulated in float32, then global clipping and AdamW on the float32
master weights with torch's multi-tensor (``_foreach``) ops."""

from __future__ import annotations

import torch

from lmspec.backends.torch_triton.model import model_grad
from lmspec.spec.train_step import (
    check_args,
    clip_factor,
    lr_at,
    micro_batch,
    micro_config,
    moe_bias_names,
    n_valid,
)

__all__ = ["data_parallel_train_step", "train_step"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}


def _host(a):
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a


def train_step(params, opt_state, batch, step, *, model_config, train_config):
    check_args(params, opt_state, batch, step, model_config=model_config,
               train_config=train_config)
    batch = {k: (None if v is None else _host(v)) for k, v in batch.items()}
    master = {n: torch.as_tensor(a) for n, a in params.items()}
    a_count, n = batch["tokens"].shape[0], n_valid(batch)
    grads, sums, loads = _accumulate(master, batch, model_config, train_config, n, a_count)
    return _apply(master, opt_state, grads, sums, loads, step, n, model_config, train_config)


def data_parallel_train_step(params, opt_state, batch, step, *, model_config, train_config,
                             group=None):
    """``train_step`` data-parallel over a torch.distributed process group (torchrun; gloo
    or NCCL): each rank passes the same params and opt_state and its own A_r micro-batches;
    the step equals ``train_step`` on the ranks' micro-batches concatenated in rank order
    (A = sum A_r). The global token count n and micro-batch count A are all-reduced first
    (every micro-batch is normalised by the whole batch's n, as in one process), then the
    summed gradients in one flat buffer (DDP's all-reduce, written out), the loss terms
    and the expert loads, and every rank applies the same clipping and AdamW. Bit-identical to one
    process on 2 ranks (a + b == b + a); with more, the all-reduce's summation order may round
    differently (float32)."""
    import torch.distributed as dist

    check_args(params, opt_state, batch, step, model_config=model_config,
               train_config=train_config)
    batch = {k: (None if v is None else _host(v)) for k, v in batch.items()}
    master = {n: torch.as_tensor(a) for n, a in params.items()}
    counts = torch.tensor([n_valid(batch), batch["tokens"].shape[0]], dtype=torch.int64)
    dist.all_reduce(counts, group=group)
    n, a_count = (int(x) for x in counts)
    grads, sums, loads = _accumulate(master, batch, model_config, train_config, n, a_count)
    names = list(grads)
    flat = torch.cat([grads[k].reshape(-1) for k in names])
    dist.all_reduce(flat, group=group)
    i = 0
    for k in names:
        grads[k] = flat[i:i + grads[k].numel()].view_as(grads[k])
        i += grads[k].numel()
    sums, loads = _reduce_sums(sums, loads, group)
    return _apply(master, opt_state, grads, sums, loads, step, n, model_config, train_config)


_SUMS = ("loss", "ce", "balance", "mtp")


def _reduce_sums(sums: dict, loads, group):
    """The loss terms and the expert loads summed over the ranks of ``group``."""
    import torch.distributed as dist

    terms = torch.tensor([sums[k] for k in _SUMS], dtype=torch.float64)  # Python floats' width
    dist.all_reduce(terms, group=group)
    sums = {k: float(v) for k, v in zip(_SUMS, terms, strict=True)}
    if loads.numel():
        loads = loads.clone()
        dist.all_reduce(loads, group=group)
    return sums, loads


def _accumulate(master, batch, model_config, tc, n: int, a_total: int):
    """This process's micro-batches: (gradients summed in the wide dtype, loss sums, loads),
    each micro-batch normalised by n and the balance terms by a_total micro-batches."""
    wide = torch.float64 if master["embed"].dtype == torch.float64 else torch.float32
    cdt = _DTYPES[tc.compute_dtype]
    pc = {k: a.to(cdt) for k, a in master.items()}
    cfg = micro_config(model_config, a_total)
    grads, loads, sums = None, None, dict.fromkeys(_SUMS, 0.0)
    for a in range(batch["tokens"].shape[0]):
        mb = micro_batch(batch, a)
        loss, metrics, g = model_grad(pc, mb["tokens"], mb["targets"], mb["positions"],
                                      mb["segment_ids"], config=cfg, n_tokens=n,
                                      weights=mb["weights"])
        sums["loss"] += float(loss)
        for k in ("ce", "balance", "mtp"):
            sums[k] += float(metrics[k])
        loads = metrics["loads"] if loads is None else loads + metrics["loads"]
        g = {k: v.to(wide) for k, v in g.items()}
        grads = g if grads is None else {k: grads[k] + g[k] for k in grads}
    return grads, sums, loads


def _apply(master, opt_state, grads, sums, loads, step, n: int, model_config, tc, norm=None):
    """Global clipping, AdamW with torch's _foreach ops, the aux-loss-free bias update.
    ``norm``: the global gradient norm when ``grads`` are shards of the gradients (FSDP)."""
    wide = torch.float64 if master["embed"].dtype == torch.float64 else torch.float32
    names = list(grads)
    gl = [grads[k] for k in names]
    if norm is None:
        norm = float(torch.sqrt(sum(torch.sum(g * g) for g in gl)))
    clip = clip_factor(norm, tc.max_grad_norm)
    lr = lr_at(int(step), tc.lr, tc.schedule)
    t = int(step) + 1
    m = [torch.as_tensor(opt_state["m"][k]).to(wide).clone() for k in names]
    v = [torch.as_tensor(opt_state["v"][k]).to(wide).clone() for k in names]
    p = [master[k].to(wide).clone() for k in names]
    if clip != 1.0:
        torch._foreach_mul_(gl, clip)
    torch._foreach_lerp_(m, gl, 1 - tc.beta1)  # m + (1 - b1) (g - m) = b1 m + (1 - b1) g
    torch._foreach_mul_(v, tc.beta2)
    torch._foreach_addcmul_(v, gl, gl, 1 - tc.beta2)
    decayed = [x for k, x in zip(names, p, strict=True) if tc.decays(k)]
    if tc.weight_decay and decayed:
        torch._foreach_mul_(decayed, 1 - lr * tc.weight_decay)
    bc1, bc2 = 1 - tc.beta1 ** t, 1 - tc.beta2 ** t
    denom = torch._foreach_div(v, bc2)
    if tc.eps_root:
        torch._foreach_add_(denom, tc.eps_root)
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, tc.eps)
    torch._foreach_addcdiv_(p, m, denom, -lr / bc1)
    new_params = dict(master)
    new_params.update(zip(names, p, strict=True))
    gamma, bias_names = tc.bias_update_rate, moe_bias_names(model_config)
    if gamma and bias_names:  # DeepSeek-V3: b += gamma * sign(N k - E load), exact
        e = model_config.moe.n_experts
        for name, load in zip(bias_names, loads, strict=True):
            s = torch.sign(load.sum() - e * load).to(master[name].dtype)
            new_params[name] = master[name] + gamma * s
    out_opt = {"m": dict(zip(names, m, strict=True)), "v": dict(zip(names, v, strict=True))}
    return new_params, out_opt, {**sums, "grad_norm": norm, "clip": clip, "lr": lr,
                                 "n_tokens": n, "loads": loads}
