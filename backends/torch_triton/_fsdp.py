"""The training step under FSDP2 (``torch.distributed.fsdp.fully_shard``): every rank holds a
dim-0 shard of every parameter and of both AdamW moments; the forward all-gathers the weights,
the backward reduce-scatters the gradients (summed: each rank's loss is already divided by
the whole batch's token count), and each rank clips (by the global norm, its shards' squares
all-reduced) and updates its own shards. The step equals ``train_step`` on the ranks'
micro-batches concatenated in rank order, up to the order of the float32 sums.

    state = FSDPState(params, opt_state, model_config=cfg, train_config=tc)
    metrics = state.step(my_micro_batches, step)      # each rank its own share
    params, opt_state = state.full()                   # whole arrays, on every rank

One FSDP unit holds the whole model (the model here is a function of a flat parameter
mapping, not a tree of modules whose forwards the per-block hooks could wrap): the memory
saved is the optimizer state's and the master weights', not the activations'."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from lmspec.backends.torch_triton.model import _loss
from lmspec.backends.torch_triton.train_step import _DTYPES, _SUMS, _apply, _host, _reduce_sums
from lmspec.spec.model import trainable
from lmspec.spec.train_step import check_args, micro_batch, micro_config, n_valid

__all__ = ["FSDPState", "fsdp_train_step"]

class _Weights(nn.Module):
    """The trainable parameters as a module tree whose ``named_parameters`` are the spec's
    flat names (``layers.0.attn.wq`` lives at ``layers -> 0 -> attn``)."""

    def __init__(self, params: dict[str, torch.Tensor]):
        super().__init__()
        for name, a in params.items():
            *path, last = name.split(".")
            mod = self
            for part in path:
                if part not in mod._modules:
                    mod.add_module(part, nn.Module())
                mod = mod._modules[part]
            mod.register_parameter(last, nn.Parameter(a.clone()))

    def forward(self, buffers, mb, *, config, n_tokens, dtype):
        p = {n: w.to(dtype) for n, w in self.named_parameters()}
        p.update({n: b.to(dtype) for n, b in buffers.items()})
        return _loss(p, mb["tokens"], mb["targets"], mb["positions"], mb["segment_ids"],
                     config, n_tokens, mb["weights"])


class FSDPState:
    """The sharded training state of one rank (see the module docstring)."""

    def __init__(self, params, opt_state, *, model_config, train_config, group=None):
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import Shard, distribute_tensor

        self.config, self.tc, self.group = model_config, train_config, group
        names = trainable(model_config)
        master = {n: torch.as_tensor(a) for n, a in params.items()}
        self.buffers = {n: a for n, a in master.items() if n not in names}
        self.module = _Weights({n: master[n] for n in names})
        g = group or dist.group.WORLD
        self.mesh = DeviceMesh.from_group(g, master["embed"].device.type)
        fully_shard(self.module, mesh=self.mesh)
        self.module.set_gradient_divide_factor(1.0)  # a sum: the loss is already / n
        self.module.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL)
        self.names = names
        self.opt = {k: {n: distribute_tensor(torch.as_tensor(opt_state[k][n]).to(
            master[n].dtype), self.mesh, [Shard(0)]).to_local() for n in names}
            for k in ("m", "v")}

    def _params(self) -> dict:
        return dict(self.module.named_parameters())

    def step(self, batch, step) -> dict:
        """One optimizer step on this rank's micro-batches (every rank the same number or
        not: the token and micro-batch counts are all-reduced first); returns the metrics of
        the whole step."""
        cfg, tc = self.config, self.tc
        batch = {k: (None if v is None else _host(v)) for k, v in batch.items()}
        counts = torch.tensor([n_valid(batch), batch["tokens"].shape[0]], dtype=torch.int64)
        dist.all_reduce(counts, group=self.group)
        n, a_total = (int(x) for x in counts)
        micro = micro_config(cfg, a_total)
        sums, loads = dict.fromkeys(_SUMS, 0.0), None
        a_mine = batch["tokens"].shape[0]
        for a in range(a_mine):
            self.module.set_requires_gradient_sync(a == a_mine - 1)  # reduce once, at the end
            loss, m = self.module(self.buffers, micro_batch(batch, a), config=micro,
                                  n_tokens=n, dtype=_DTYPES[tc.compute_dtype])
            loss.backward()
            sums["loss"] += float(loss.detach())
            for k in ("ce", "balance", "mtp"):
                sums[k] += float(m[k])
            loads = m["loads"] if loads is None else loads + m["loads"]
        sums, loads = _reduce_sums(sums, loads, self.group)
        params = self._params()
        local = {k: params[k].to_local().detach() for k in self.names}
        grads = {k: params[k].grad.to_local() for k in self.names}
        sq = torch.stack([torch.sum(g.double() * g.double()) for g in grads.values()]).sum()
        dist.all_reduce(sq, group=self.group)
        new_p, new_o, metrics = _apply({**local, **self.buffers}, self.opt, grads, sums,
                                       loads, step, n, cfg, tc, norm=float(torch.sqrt(sq)))
        with torch.no_grad():
            for k in self.names:
                local[k].copy_(new_p[k])
                params[k].grad = None
        self.buffers = {k: new_p[k] for k in self.buffers}
        self.opt = {k: {n: new_o[k][n] for n in self.names} for k in ("m", "v")}
        return metrics

    def full(self) -> tuple[dict, dict]:
        """(params, opt_state) as whole tensors on every rank (all-gathered)."""
        from torch.distributed.tensor import DTensor, Shard

        params = self._params()
        out = {k: params[k].full_tensor().detach() for k in self.names}
        out.update(self.buffers)
        opt = {}
        for k in ("m", "v"):
            opt[k] = {}
            for n in self.names:
                d = DTensor.from_local(self.opt[k][n], self.mesh, [Shard(0)],
                                       shape=params[n].shape, stride=params[n].stride())
                opt[k][n] = d.full_tensor()
        return out, opt


def fsdp_train_step(params, opt_state, batch, step, *, model_config, train_config,
                    group=None):
    """One step as a function (shard, step, gather): the same signature and result as
    ``data_parallel_train_step``, for checks against one process; a training loop keeps an
    ``FSDPState`` instead, so that nothing whole is held between steps."""
    check_args(params, opt_state, batch, step, model_config=model_config,
               train_config=train_config)
    state = FSDPState(params, opt_state, model_config=model_config, train_config=train_config,
                      group=group)
    metrics = state.step(batch, step)
    p, o = state.full()
    return p, o, metrics
