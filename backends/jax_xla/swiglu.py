"""SwiGLU feed-forward (Shazeer, 2020) in jitted JAX; matmuls accumulate in float32."""

from __future__ import annotations

from collections.abc import Callable

import jax

from lmspec.backends.jax_xla._common import einsum
from lmspec.spec.swiglu import check_args


def gated_ffn(x, w_gate, w_up, w_down, act: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """down(act(x Wg) * (x Wu)) in float32, rounded once to the dtype of x; GeGLU shares it."""
    a = einsum("...d,df->...f", x, w_gate)  # (..., F)
    b = einsum("...d,df->...f", x, w_up)  # (..., F)
    return einsum("...f,fo->...o", act(a) * b, w_down).astype(x.dtype)  # (..., D_out)


@jax.jit
def _swiglu(x, w_gate, w_up, w_down):
    return gated_ffn(x, w_gate, w_up, w_down, jax.nn.silu)


def swiglu(x, w_gate, w_up, w_down):
    check_args(x, w_gate, w_up, w_down)
    return _swiglu(x, w_gate, w_up, w_down)
