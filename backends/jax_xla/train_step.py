"""One training step (spec/train_step.py) as one jitted function per (model, train config,
micro-batch count): the model's gradients per micro-batch in the compute dtype by
value_and_grad, accumulated in float32, global clipping, AdamW on the float32 master weights
and the aux-loss-free bias update. The step's learning rate and bias corrections come in as
traced scalars, so a run compiles once."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lmspec.backends.jax_xla.model import _int32, _objective
from lmspec.spec.cross_entropy import check_targets
from lmspec.spec.model import default_positions, tensor_parallel_dim, trainable
from lmspec.spec.train_step import (
    check_args,
    lr_at,
    micro_config,
    moe_bias_names,
    n_valid,
)

__all__ = ["mesh_train_step", "train_step"]

_DTYPES = {"float64": jnp.float64, "float32": jnp.float32, "bfloat16": jnp.bfloat16}


@functools.partial(jax.jit, static_argnames=("model_config", "train_config"))
def _step(params, m, v, tokens, targets, pos, seg, wts, n_div, lr, bc1, bc2, *, model_config,
          train_config):
    tc, cfg = train_config, model_config
    cdt = _DTYPES[tc.compute_dtype]
    names = trainable(cfg)
    train = {k: params[k].astype(cdt) for k in names}
    buffers = {k: a.astype(cdt) for k, a in params.items() if k not in train}
    micro = micro_config(cfg, tokens.shape[0])
    grad_fn = jax.value_and_grad(_objective, has_aux=True)

    def one(carry, xs):  # one micro-batch: its gradients and sums added to the carry
        grads, sums, loads = carry
        tok, tg, ps, sg, w = xs
        (loss, (ce, bal, mtp, ld)), g = grad_fn(train, buffers, tok, tg, ps, sg, n_div, micro,
                                                w)
        grads = {k: grads[k] + g[k].astype(jnp.float32) for k in names}
        return (grads, sums + jnp.stack([loss, ce, bal, mtp]).astype(jnp.float32),
                loads + ld), None

    e = 0 if cfg.moe is None else cfg.moe.n_experts
    n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.n_layers + cfg.mtp_depth))
    init = ({k: jnp.zeros(params[k].shape, jnp.float32) for k in names},
            jnp.zeros(4, jnp.float32), jnp.zeros((n_moe, e), jnp.int32))
    # a scan over the micro-batches: one compiled body whatever their number (None weights
    # and segment ids are empty pytrees: an unweighted step compiles as before)
    (grads, sums, loads), _ = jax.lax.scan(one, init, (tokens, targets, pos, seg, wts))
    norm = jnp.sqrt(sum(jnp.sum(g * g) for g in grads.values()))
    clip = (jnp.float32(1.0) if tc.max_grad_norm is None else
            jnp.minimum(1.0, tc.max_grad_norm / (norm + 1e-6)))
    new_p, new_m, new_v = dict(params), {}, {}
    for k in names:
        g = grads[k] * clip
        mk = tc.beta1 * m[k] + (1 - tc.beta1) * g
        vk = tc.beta2 * v[k] + (1 - tc.beta2) * g * g
        p = params[k]
        if tc.weight_decay and tc.decays(k):
            p = p * (1 - lr * tc.weight_decay)
        new_p[k] = p - lr * (mk / bc1) / (jnp.sqrt(vk / bc2 + tc.eps_root) + tc.eps)
        new_m[k], new_v[k] = mk, vk
    bias_names = moe_bias_names(cfg)
    if tc.bias_update_rate and bias_names:  # b += gamma * sign(N k - E load), exact
        e = cfg.moe.n_experts
        for name, load in zip(bias_names, loads, strict=True):
            s = jnp.sign(load.sum() - e * load).astype(params[name].dtype)
            new_p[name] = params[name] + tc.bias_update_rate * s
    return new_p, new_m, new_v, sums, norm, clip, loads


def train_step(params, opt_state, batch, step, *, model_config, train_config):
    check_args(params, opt_state, batch, step, model_config=model_config,
               train_config=train_config)
    arrays, scalars, n, lr = _inputs(batch, step, model_config, train_config)
    return _finish(_step(dict(params), dict(opt_state["m"]), dict(opt_state["v"]), *arrays,
                         *scalars, model_config=model_config, train_config=train_config), n, lr)


def mesh_train_step(mesh, params, opt_state, batch, step, *, model_config, train_config,
                    data_axis: str = "data", model_axis: str | None = "model"):
    """``train_step`` on a ``jax.sharding.Mesh``: the same jitted step, its inputs placed by
    ``NamedSharding`` and XLA's partitioner inserting the collectives. Every micro-batch's rows
    are split over ``data_axis`` (data parallelism: each device's share of the gradient sum,
    all-reduced); the parameters and both moments are split over ``model_axis`` by
    ``tensor_parallel_dim`` (Megatron's column / row split of the attention and FFN
    projections, routed experts by expert, the vocabulary of the embedding and head) and
    replicated along the data axis; ``model_axis=None`` replicates them.
    The math is the single-device step's: only the order of the float32 sums differs."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    check_args(params, opt_state, batch, step, model_config=model_config,
               train_config=train_config)
    axes = dict(zip(mesh.axis_names, mesh.devices.shape, strict=True))
    if data_axis not in axes:
        raise ValueError(f"data_axis: {data_axis!r} is not an axis of the mesh {axes}")
    if model_axis is not None and model_axis not in axes:
        raise ValueError(f"model_axis: {model_axis!r} is not an axis of the mesh {axes} "
                         "(pass model_axis=None to replicate the parameters)")
    rows = np.shape(batch["tokens"])[1]
    if rows % axes[data_axis]:
        raise ValueError(f"batch: {rows} rows per micro-batch do not split over the "
                         f"{axes[data_axis]} devices of mesh axis {data_axis!r}")
    arrays, scalars, n, lr = _inputs(batch, step, model_config, train_config)
    shards = 1 if model_axis is None else axes[model_axis]

    def place_param(name, a):
        spec = [None] * np.ndim(a)
        dim = tensor_parallel_dim(name, model_config)
        if shards > 1 and dim is not None and np.shape(a)[dim] % shards == 0:
            spec[dim] = model_axis
        return jax.device_put(a, NamedSharding(mesh, P(*spec)))

    def place_rows(a):  # (A, B, T): B over the data axis
        return None if a is None else jax.device_put(
            a, NamedSharding(mesh, P(None, data_axis, None)))

    state = [{k: place_param(k, a) for k, a in d.items()}
             for d in (params, opt_state["m"], opt_state["v"])]
    replicated = NamedSharding(mesh, P())
    return _finish(_step(*state, *(place_rows(a) for a in arrays),
                         *(jax.device_put(x, replicated) for x in scalars),
                         model_config=model_config, train_config=train_config), n, lr)


def _inputs(batch, step, model_config, train_config):
    """The step's device inputs: (tokens, targets, positions, segment ids, weights) stacked
    per micro-batch, the traced scalars (token count, lr, both bias corrections), the token
    count and the learning rate."""
    tc = train_config
    toks = np.asarray(batch["tokens"])
    tg = np.asarray(batch["targets"])
    check_targets(tg, model_config.vocab_size, -100)
    a_count, b, t = toks.shape
    seg = batch.get("segment_ids")
    pos = batch.get("positions")
    if pos is None:
        pos = np.stack([default_positions(b, t, None if seg is None else np.asarray(seg)[a])
                        for a in range(a_count)])
    w = batch.get("weights")
    wts = None if w is None else jnp.asarray(np.asarray(w, np.float32))
    n = n_valid(batch)
    lr = lr_at(int(step), tc.lr, tc.schedule)
    k = int(step) + 1
    scalars = [jnp.float32(x) for x in (max(n, 1), lr, 1 - tc.beta1 ** k, 1 - tc.beta2 ** k)]
    return (_int32(toks), _int32(tg), _int32(pos), _int32(seg), wts), scalars, n, lr


def _finish(out, n, lr):
    new_p, new_m, new_v, sums, norm, clip, loads = out
    loss, ce, bal, mtp = (float(x) for x in np.asarray(sums))
    return new_p, {"m": new_m, "v": new_v}, {
        "loss": loss, "ce": ce, "balance": bal, "mtp": mtp, "grad_norm": float(norm),
        "clip": float(clip), "lr": lr, "n_tokens": n, "loads": loads}
