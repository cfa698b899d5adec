"""Lightning Attention (Qin et al. 2024; MiniMax-01) in jitted JAX: linear attention's chunked
form with the identity map, one block of ``block_size`` tokens per scan step."""

from __future__ import annotations

from lmspec.backends.jax_xla.linear_attention import run, validate_decay
from lmspec.spec.lightning_attention import check_args


def lightning_attention(q, k, v, log_decay=None, initial_state=None, *, block_size=16,
                        scale=None):
    check_args(q, k, v, log_decay, initial_state, block_size=block_size, scale=scale)
    validate_decay(log_decay)
    return run(q, k, v, log_decay, initial_state, feature_map="identity", form="chunked",
               chunk_size=int(block_size), scale=1.0 if scale is None else float(scale))
