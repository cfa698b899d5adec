"""GeGLU feed-forward (Shazeer, 2020) in jitted JAX: tanh or erf GELU gate."""

from __future__ import annotations

import functools

import jax

from lmspec.backends.jax_xla.swiglu import gated_ffn
from lmspec.spec.geglu import check_args


@functools.partial(jax.jit, static_argnames=("approximate",))
def _geglu(x, w_gate, w_up, w_down, *, approximate: str):
    def act(a):
        return jax.nn.gelu(a, approximate=approximate == "tanh")

    return gated_ffn(x, w_gate, w_up, w_down, act)


def geglu(x, w_gate, w_up, w_down, *, approximate: str = "tanh"):
    check_args(x, w_gate, w_up, w_down, approximate=approximate)
    return _geglu(x, w_gate, w_up, w_down, approximate=approximate)
