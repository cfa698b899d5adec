"""Lightning Attention (Qin et al. 2024; MiniMax-01): the block form in torch, or Triton on CUDA.

Each block is linear_attention's ``block`` (intra-block masked decay product plus the
inter-block state term); with the identity map this is the whole Lightning algorithm. CUDA
tensors take the Triton chunked kernel with block_size as its chunk.
"""

from __future__ import annotations

from lmspec.backends.torch_triton._dispatch import kernel_dtype, on_cuda
from lmspec.backends.torch_triton.linear_attention import chunked, prepare, validate_decay
from lmspec.spec.lightning_attention import check_args


def lightning_attention(q, k, v, log_decay=None, initial_state=None, *, block_size=16,
                        scale=None):
    return forward(q, k, v, log_decay, initial_state, block_size, scale,
                   kernel=on_cuda(q, k, v))


def forward(q, k, v, log_decay, initial_state, block_size: int, scale: float | None, *,
            kernel: bool):
    check_args(q, k, v, log_decay, initial_state, block_size=block_size, scale=scale)
    validate_decay(log_decay)
    scale = 1.0 if scale is None else float(scale)
    if kernel and kernel_dtype(q):
        from lmspec.backends.torch_triton.kernels.linear_attention import chunked_triton

        return chunked_triton(q, k, v, log_decay, initial_state, "identity", int(block_size),
                              scale)
    qf, kf, vf, s0, ld = prepare(q, k, v, log_decay, initial_state, "identity")
    out, s = chunked(qf, kf, vf, s0, ld, scale, int(block_size))
    return out.transpose(1, 2).to(q.dtype), s
