"""The jax_xla backend: jit-compiled JAX (XLA) for every spec stem, gradients via jax.vjp.

Low precision (bfloat16, float16) computes in float32 and rounds each output once, as fused
kernels do; sdpa's lse and cross_entropy's loss stay float32. x64 stays disabled: integer
inputs (ids, positions, targets, segment ids) become int32, which holds every domain value.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lmspec.backends import numpy_dtype
from lmspec.backends.jax_xla.attention_merge import attention_merge
from lmspec.backends.jax_xla.awq import awq
from lmspec.backends.jax_xla.cross_entropy import cross_entropy
from lmspec.backends.jax_xla.embedding import embedding
from lmspec.backends.jax_xla.gae import gae
from lmspec.backends.jax_xla.geglu import geglu
from lmspec.backends.jax_xla.gptq import gptq
from lmspec.backends.jax_xla.grpo_loss import grpo_loss
from lmspec.backends.jax_xla.kto_loss import kto_loss
from lmspec.backends.jax_xla.layer_norm import layer_norm
from lmspec.backends.jax_xla.lightning_attention import lightning_attention
from lmspec.backends.jax_xla.linear_attention import linear_attention
from lmspec.backends.jax_xla.log_softmax import log_softmax
from lmspec.backends.jax_xla.mla import mla
from lmspec.backends.jax_xla.model import model, model_grad, model_loss
from lmspec.backends.jax_xla.moe_balance_loss import moe_balance_loss
from lmspec.backends.jax_xla.moe_bias_update import moe_bias_update
from lmspec.backends.jax_xla.moe_layer import moe_layer, moe_layer_vjp
from lmspec.backends.jax_xla.moe_router import moe_router, moe_router_vjp
from lmspec.backends.jax_xla.ppo_loss import ppo_loss
from lmspec.backends.jax_xla.preference_loss import preference_loss
from lmspec.backends.jax_xla.quant_fp4 import quant_fp4
from lmspec.backends.jax_xla.quant_fp8 import quant_fp8
from lmspec.backends.jax_xla.quant_int4 import quant_int4
from lmspec.backends.jax_xla.quant_int8 import quant_int8
from lmspec.backends.jax_xla.quant_kv_cache import quant_kv_cache
from lmspec.backends.jax_xla.quant_matmul import quant_matmul
from lmspec.backends.jax_xla.rejection_sample import rejection_sample
from lmspec.backends.jax_xla.reward_model_loss import reward_model_loss
from lmspec.backends.jax_xla.rms_norm import rms_norm
from lmspec.backends.jax_xla.rope import rope
from lmspec.backends.jax_xla.sdpa import sdpa
from lmspec.backends.jax_xla.sequence_logprob import sequence_logprob
from lmspec.backends.jax_xla.softmax import softmax
from lmspec.backends.jax_xla.swiglu import swiglu
from lmspec.backends.jax_xla.train_step import train_step

__all__ = [
    "DTYPES", "NAME", "UNSUPPORTED", "asarray", "attention_merge", "cross_entropy", "embedding",
    "geglu", "layer_norm", "lightning_attention", "linear_attention", "log_softmax", "mla",
    "model", "model_grad", "model_loss",
    "moe_balance_loss", "moe_bias_update", "moe_layer", "moe_layer_vjp", "moe_router",
    "moe_router_vjp",
    "quant_fp4", "quant_fp8", "quant_int4", "quant_int8",
    "quant_matmul", "gptq", "awq", "quant_kv_cache", "rejection_sample",
    "gae", "grpo_loss", "ppo_loss",
    "preference_loss", "sequence_logprob",
    "reward_model_loss",
    "kto_loss",
    "rms_norm", "rope", "sdpa", "softmax", "swiglu",
    "to_numpy", "train_step", "vjp",
]

NAME = "jax_xla"
DTYPES = ("float32", "bfloat16", "float16")
# XLA on CPU runs every op here in float16 (it upcasts internally); nothing is excluded.
UNSUPPORTED: frozenset[tuple[str, str]] = frozenset()


def asarray(a: np.ndarray, dtype: str | None) -> jax.Array:
    a = np.asarray(a)
    if a.dtype.kind in "iu":
        return jnp.asarray(a.astype(np.int32))  # x64 is off; every domain value fits
    return jnp.asarray(a if dtype is None else a.astype(numpy_dtype(dtype)))


def to_numpy(t: jax.Array) -> np.ndarray:
    return np.asarray(t)  # bfloat16 arrives as ml_dtypes.bfloat16


@functools.partial(jax.jit, static_argnames=("fn", "names", "params"))
def _pullback(fn: Callable[..., Any], names: tuple[str, ...], params: tuple, diff: tuple,
              rest: dict, cotangents: tuple):
    def run(*d):
        out = fn(**rest, **dict(zip(names, d, strict=True)), **dict(params))
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    outs, pull = jax.vjp(run, *diff)
    # a cotangent arrives in the tested dtype; lse and the loss are float32 here
    cts = tuple(jnp.asarray(c, o.dtype).reshape(o.shape)
                for c, o in zip(cotangents, outs, strict=True))
    return pull(cts)


def vjp(fn: Callable[..., Any], arrays: Mapping[str, Any], params: Mapping[str, Any],
        cotangents: Sequence[Any], wrt: Sequence[str]) -> dict[str, Any]:
    """Gradients of ``fn(**arrays, **params)`` for the names in ``wrt`` (None for None inputs).

    One jitted pullback per (fn, shapes, params): the public callable runs inside the trace,
    so its shape checks hold and its host-side value checks are skipped (tracers).
    """
    names = tuple(n for n in wrt if arrays.get(n) is not None)
    rest = {k: a for k, a in arrays.items() if k not in names}
    params_key = tuple(sorted(params.items()))
    grads = _pullback(fn, names, params_key, tuple(arrays[n] for n in names), rest,
                      tuple(cotangents))
    found = dict(zip(names, grads, strict=True))
    return {n: found.get(n) for n in wrt}
