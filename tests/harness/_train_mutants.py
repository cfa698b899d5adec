"""Planted bugs in the training step: the reference step (float64 master weights, the model
in the target's compute dtype) with one mistake in its optimizer, clipping, schedule,
accumulation or precision. Registered into mutants.MUTANTS by ``register``."""

from __future__ import annotations

import contextlib
import functools
import importlib
from types import SimpleNamespace

import ml_dtypes
import numpy as np

from lmspec.backends import _reference_backend as ref_backend
from lmspec.spec import train_step as TS

RT = importlib.import_module("lmspec.reference.train_step")
_orig_adamw = RT.adamw_update
_orig_accumulate = RT.accumulate
_orig_lr_at = RT.lr_at


@contextlib.contextmanager
def _patched(**attrs):
    old = {n: getattr(RT, n) for n in attrs}
    try:
        for n, v in attrs.items():
            setattr(RT, n, v)
        yield
    finally:
        for n, v in old.items():
            setattr(RT, n, v)


def _adam_l2(params, opt_state, grads, step, *, train_config, dtype=np.float64):
    """Adam + L2: the decay folded into the gradient (g += wd p), not decoupled."""
    tc = train_config
    g = {n: (np.asarray(v, np.float64) + tc.weight_decay * np.asarray(params[n], np.float64)
             if tc.decays(n) else v) for n, v in grads.items()}
    return _orig_adamw(params, opt_state, g, step, dtype=dtype,
                       train_config=TS.TrainConfig.from_dict({**tc.to_dict(),
                                                              "weight_decay": 0.0}))


def _no_bias_correction(params, opt_state, grads, step, *, train_config, dtype=np.float64):
    """m and v used raw: the same as bias correction at a step so late that beta^t = 0."""
    new_p, new_o, norm, clip, lr = _orig_adamw(params, opt_state, grads, step,
                                               train_config=train_config, dtype=dtype)
    tc = train_config
    out = dict(new_p)
    for n in new_o["m"]:
        p = np.asarray(params[n], np.float64)
        if tc.weight_decay and tc.decays(n):
            p = p * (1 - lr * tc.weight_decay)
        out[n] = p - lr * new_o["m"][n] / (np.sqrt(new_o["v"][n] + tc.eps_root) + tc.eps)
    return out, new_o, norm, clip, lr


def _eps_inside_root(params, opt_state, grads, step, *, train_config, dtype=np.float64):
    """sqrt(v_hat + eps) where sqrt(v_hat) + eps is asked (eps_root = 0)."""
    tc = train_config
    moved = TS.TrainConfig.from_dict({**tc.to_dict(), "eps_root": tc.eps_root + tc.eps,
                                      "eps": 0.0 if tc.eps_root + tc.eps > 0 else tc.eps})
    return _orig_adamw(params, opt_state, grads, step, train_config=moved, dtype=dtype)


def _clip_per_tensor(params, opt_state, grads, step, *, train_config, dtype=np.float64):
    """Each tensor clipped by its own norm, not the global one."""
    tc = train_config
    if tc.max_grad_norm is None:
        return _orig_adamw(params, opt_state, grads, step, train_config=tc, dtype=dtype)
    g = {n: np.asarray(v, np.float64) * TS.clip_factor(float(np.sqrt(np.sum(
        np.asarray(v, np.float64) ** 2))), tc.max_grad_norm) for n, v in grads.items()}
    new_p, new_o, _, _, lr = _orig_adamw(params, opt_state, g, step, dtype=dtype,
                                         train_config=TS.TrainConfig.from_dict(
                                             {**tc.to_dict(), "max_grad_norm": None}))
    norm = float(np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in grads.values())))
    return new_p, new_o, norm, TS.clip_factor(norm, tc.max_grad_norm), lr


def _mean_of_means(params_c, batch, *, model_config, grad=None):
    """Each micro-batch normalised by its own token count, the results averaged: the 2024
    transformers gradient-accumulation bug."""
    a_count = np.shape(batch["tokens"])[0]
    total = None
    for a in range(a_count):
        one = {k: (None if batch.get(k) is None else np.asarray(batch[k])[a:a + 1])
               for k in TS.BATCH_KEYS}
        loss, metrics, grads = _orig_accumulate(params_c, one, model_config=model_config,
                                                **({} if grad is None else {"grad": grad}))
        grads = {n: g / a_count for n, g in grads.items()}
        if total is None:
            total = [loss / a_count, metrics, grads]
        else:
            total[0] += loss / a_count
            total[2] = {n: total[2][n] + grads[n] for n in grads}
            total[1] = {**total[1], "loads": total[1]["loads"] + metrics["loads"],
                        "n_tokens": total[1]["n_tokens"] + metrics["n_tokens"]}
    return tuple(total)


def _master_in_bf16(fn):
    """The new master weights rounded to bfloat16 (no float32 master copy)."""
    @functools.wraps(fn)
    def run(*args, **kw):
        p, o, m = fn(*args, **kw)
        return {n: np.asarray(a, np.float64).astype(ml_dtypes.bfloat16).astype(np.float64)
                for n, a in p.items()}, o, m
    return run


def _weights_dropped(fn):
    """The batch's per-target weights never reach the model: every target weighs 1."""
    @functools.wraps(fn)
    def run(params, opt_state, batch, *args, **kw):
        return fn(params, opt_state, {k: v for k, v in batch.items() if k != "weights"},
                  *args, **kw)
    return run


PLANTS = {
    # name: (patch, catches, dtypes, wrap)
    "train_weight_decay_coupled_into_the_gradient": (
        lambda: _patched(adamw_update=_adam_l2), ("step",), ("float32",), None),
    "train_no_bias_correction": (
        lambda: _patched(adamw_update=_no_bias_correction), ("step",), ("float32",), None),
    "train_eps_inside_the_root": (
        lambda: _patched(adamw_update=_eps_inside_root), ("step",), ("float32",), None),
    "train_clipping_per_tensor": (
        lambda: _patched(adamw_update=_clip_per_tensor), ("step",), ("float32",), None),
    "train_accumulation_mean_of_micro_batch_means": (
        lambda: _patched(accumulate=_mean_of_means), ("step", "accumulation_invariance"),
        ("float32",), None),
    "train_schedule_off_by_one_step": (
        lambda: _patched(lr_at=lambda s, lr, sc: _orig_lr_at(s + 1, lr, sc)), ("step",),
        ("float32",), None),
    "train_master_weights_in_bfloat16": (contextlib.nullcontext, ("step",), ("bfloat16",),
                                         _master_in_bf16),
    "train_batch_weights_dropped": (contextlib.nullcontext, ("step",), ("float32",),
                                    _weights_dropped),
}


def _backend(name: str, patch, dtypes, wrap) -> SimpleNamespace:
    step = RT.train_step if wrap is None else wrap(RT.train_step)

    @functools.wraps(RT.train_step)
    def train_step(*args, **kw):
        with patch():
            return step(*args, **kw)
    return SimpleNamespace(NAME=f"mutant-{name}", DTYPES=dtypes, asarray=ref_backend.asarray,
                           to_numpy=ref_backend.to_numpy, train_step=train_step)


def register(mutants: dict, must_catch: dict) -> None:
    for name, (patch, catches, dtypes, wrap) in PLANTS.items():
        mutants[name] = ("train_step", _backend(name, patch, dtypes, wrap))
        must_catch[name] = catches
