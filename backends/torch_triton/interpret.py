"""The triton_interpret backend: torch_triton with its Triton kernels run by the interpreter.

``TRITON_INTERPRET=1`` must be set before triton is first imported (lmspec.backends does
so on a machine without an NVIDIA device; this module refuses to load otherwise), and the
kernel stems (rms_norm, rope, swiglu, cross_entropy, sdpa, linear_attention,
lightning_attention, quant_matmul, moe_layer) send CPU tensors of
float32/bfloat16/float16 through the kernels. It exposes only those stems: the others would
take the same torch path as in torch_triton and repeat its conformance run, so they are left to
it (reported not implemented here). For correctness on small shapes only: it is slow.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import triton.language as _tl  # noqa: E402

from lmspec.backends import BackendUnavailable  # noqa: E402

if type(_tl.standard.sum).__name__ != "InterpretedFunction":
    raise BackendUnavailable(
        "triton_interpret: triton was imported before TRITON_INTERPRET=1 was set (another "
        "library imported it first), and Triton fixes its mode at import; export "
        "TRITON_INTERPRET=1 or run this backend in a process of its own")

from lmspec.backends.torch_triton import to_numpy, vjp
from lmspec.backends.torch_triton._protocol import host_tensor as asarray  # the interpreter's
from lmspec.backends.torch_triton.cross_entropy import forward as _cross_entropy
from lmspec.backends.torch_triton.lightning_attention import forward as _lightning_attention
from lmspec.backends.torch_triton.linear_attention import forward as _linear_attention
from lmspec.backends.torch_triton.moe_layer import forward as _moe_layer
from lmspec.backends.torch_triton.quant_matmul import forward as _quant_matmul
from lmspec.backends.torch_triton.rms_norm import forward as _rms_norm
from lmspec.backends.torch_triton.rope import forward as _rope
from lmspec.backends.torch_triton.sdpa import forward as _sdpa
from lmspec.backends.torch_triton.swiglu import forward as _swiglu
from lmspec.spec.cross_entropy import IGNORE_INDEX
from lmspec.spec.rope import RopeScaling

NAME = "triton_interpret"
DTYPES = ("float32", "bfloat16", "float16")

__all__ = [
    "DTYPES", "NAME", "asarray", "cross_entropy", "lightning_attention", "linear_attention",
    "moe_layer", "quant_matmul", "rms_norm", "rope", "sdpa", "swiglu", "to_numpy", "vjp",
]


def rms_norm(x, weight=None, *, eps: float = 1e-6, weight_offset: float = 0.0):
    return _rms_norm(x, weight, eps, weight_offset, kernel=True)


def rope(x, positions, *, theta: float = 10000.0, rotary_dim: int | None = None,
         interleaved: bool = False, scaling: RopeScaling | None = None):
    return _rope(x, positions, theta, rotary_dim, interleaved, scaling, kernel=True)


def sdpa(q, k, v, segment_ids_q=None, segment_ids_kv=None, *, causal: bool = False,
         window: int | None = None, softcap: float | None = None, scale: float | None = None):
    return _sdpa(q, k, v, segment_ids_q, segment_ids_kv, causal, window, softcap, scale,
                 kernel=True)


def swiglu(x, w_gate, w_up, w_down):
    return _swiglu(x, w_gate, w_up, w_down, kernel=True)


def moe_layer(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate=None,
              shared_w_up=None, shared_w_down=None, shared_gate=None, *,
              capacity_factor: float | None = None):
    """The routed experts run the Triton grouped GEMM; the shared expert stays torch."""
    return _moe_layer(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate,
                      shared_w_up, shared_w_down, shared_gate, capacity_factor, kernel=True)


def cross_entropy(logits, targets, *, ignore_index: int = IGNORE_INDEX,
                  label_smoothing: float = 0.0, z_loss: float = 0.0):
    return _cross_entropy(logits, targets, ignore_index, label_smoothing, z_loss, kernel=True)


def linear_attention(q, k, v, log_decay=None, initial_state=None, *, feature_map="identity",
                     form="parallel", chunk_size=16, scale=None):
    """form="chunked" runs the Triton chunked kernel; the other forms take the torch path."""
    return _linear_attention(q, k, v, log_decay, initial_state, feature_map, form, chunk_size,
                             scale, kernel=True)


def lightning_attention(q, k, v, log_decay=None, initial_state=None, *, block_size=16,
                        scale=None):
    return _lightning_attention(q, k, v, log_decay, initial_state, block_size, scale,
                                kernel=True)


def quant_matmul(x, packed, scales, zeros=None, *, bits: int = 4, group_size: int = 128,
                 mode: str = "weight_only"):
    return _quant_matmul(x, packed, scales, zeros, bits, group_size, mode, kernel=True)
