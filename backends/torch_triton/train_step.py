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

__all__ = ["train_step"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}


def _host(a):
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a


def train_step(params, opt_state, batch, step, *, model_config, train_config):
    check_args(params, opt_state, batch, step, model_config=model_config,
               train_config=train_config)
    tc = train_config
    batch = {k: (None if v is None else _host(v)) for k, v in batch.items()}
    master = {n: torch.as_tensor(a) for n, a in params.items()}
    wide = torch.float64 if master["embed"].dtype == torch.float64 else torch.float32
    cdt = _DTYPES[tc.compute_dtype]
    pc = {n: a.to(cdt) for n, a in master.items()}
    a_count, n = batch["tokens"].shape[0], n_valid(batch)
    cfg = micro_config(model_config, a_count)
    grads, loads, sums = None, None, {"loss": 0.0, "ce": 0.0, "balance": 0.0, "mtp": 0.0}
    for a in range(a_count):
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
    names = list(grads)
    gl = [grads[k] for k in names]
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
