"""One training step (spec/train_step.py) in float64: the reference model's gradients per
micro-batch, then clipping and AdamW written out plainly."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from lmspec.reference.model import model_grad
from lmspec.spec.train_step import (
    check_args,
    clip_factor,
    lr_at,
    micro_batch,
    micro_config,
    moe_bias_names,
    n_valid,
)

__all__ = ["accumulate", "adamw_update", "train_step"]

_DTYPES = {"float64": np.float64, "float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def cast(params, compute_dtype: str) -> dict[str, np.ndarray]:
    """The master weights rounded to the compute dtype (held in float64)."""
    dt = _DTYPES[compute_dtype]
    return {n: np.asarray(a, np.float64).astype(dt).astype(np.float64)
            for n, a in params.items()}


def accumulate(params_c, batch, *, model_config, grad=model_grad):
    """(sum of micro-batch losses, metrics summed, gradients summed) with every micro-batch
    normalised by the whole batch's token count; ``grad`` is the model_grad to call."""
    a_count = np.shape(batch["tokens"])[0]
    n = n_valid(batch)
    cfg = micro_config(model_config, a_count)
    loss, grads, sums, loads = 0.0, None, {"ce": 0.0, "balance": 0.0, "mtp": 0.0}, None
    for a in range(a_count):
        mb = micro_batch(batch, a)
        la, ma, ga = grad(params_c, mb["tokens"], mb["targets"], mb["positions"],
                          mb["segment_ids"], config=cfg, n_tokens=n, weights=mb["weights"])
        loss += float(la)
        for k in sums:
            sums[k] += float(ma.get(k, 0.0))
        ld = np.asarray(ma["loads"], np.int64)
        loads = ld if loads is None else loads + ld
        ga = {k: np.asarray(v, np.float64) for k, v in ga.items()}
        grads = ga if grads is None else {k: grads[k] + ga[k] for k in grads}
    return loss, {**sums, "n_tokens": n, "loads": loads}, grads


def adamw_update(params, opt_state, grads, step: int, *, train_config, dtype=np.float64):
    """Clipping and AdamW in ``dtype`` (float64 here; float32 is the naive of a backend):
    (params', opt_state', grad_norm, clip factor, lr_t). Buffers (names without a gradient)
    pass through."""
    tc, dt = train_config, np.dtype(dtype)
    g = {n: np.asarray(v, np.float64).astype(dt) for n, v in grads.items()}
    norm = float(np.sqrt(sum(np.sum(v.astype(dt) * v, dtype=dt) for v in g.values())))
    clip = clip_factor(norm, tc.max_grad_norm)
    lr = lr_at(step, tc.lr, tc.schedule)
    t = step + 1
    b1, b2 = dt.type(tc.beta1), dt.type(tc.beta2)
    bc1, bc2 = dt.type(1 - tc.beta1 ** t), dt.type(1 - tc.beta2 ** t)
    new_p, m_out, v_out = dict(params), {}, {}
    for n, gn in g.items():
        gn = gn * dt.type(clip)
        m = b1 * np.asarray(opt_state["m"][n], dt) + (1 - b1) * gn
        v = b2 * np.asarray(opt_state["v"][n], dt) + (1 - b2) * gn * gn
        p = np.asarray(params[n], dt)
        if tc.weight_decay and tc.decays(n):
            p = p * dt.type(1 - lr * tc.weight_decay)
        p = p - dt.type(lr) * (m / bc1) / (np.sqrt(v / bc2 + dt.type(tc.eps_root))
                                           + dt.type(tc.eps))
        new_p[n], m_out[n], v_out[n] = p, m, v
    return new_p, {"m": m_out, "v": v_out}, norm, clip, lr


def bias_update(params, loads, *, model_config, train_config) -> dict:
    """DeepSeek-V3's aux-loss-free update of each router bias from the step's loads:
    b += gamma * sign(N k - E load) (exact, in integers)."""
    gamma, out = train_config.bias_update_rate, dict(params)
    names = moe_bias_names(model_config)
    if not gamma or not names:
        return out
    e = model_config.moe.n_experts
    for name, load in zip(names, np.asarray(loads, np.int64), strict=True):
        s = np.sign(int(load.sum()) - e * load).astype(np.float64)
        out[name] = np.asarray(params[name], np.float64) + gamma * s
    return out


def train_step(params, opt_state, batch, step, *, model_config, train_config):
    check_args(params, opt_state, batch, step, model_config=model_config,
               train_config=train_config)
    p64 = {n: np.asarray(a, np.float64) for n, a in params.items()}
    loss, metrics, grads = accumulate(cast(p64, train_config.compute_dtype), batch,
                                      model_config=model_config)
    new_p, new_opt, norm, clip, lr = adamw_update(p64, opt_state, grads, int(step),
                                                  train_config=train_config)
    new_p = bias_update(new_p, metrics["loads"], model_config=model_config,
                        train_config=train_config)
    return new_p, new_opt, {**metrics, "loss": loss, "grad_norm": norm, "clip": clip,
                            "lr": lr}
