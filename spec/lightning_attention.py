"""Lightning Attention's block form (Qin et al. 2024, Lightning Attention-2; MiniMax-01, 2025).

Softmax-free causal attention computed block by block: the intra-block term as a masked,
decayed product, the inter-block term from the running KV state. The math is
linear_attention's with the identity feature map.
"""

from __future__ import annotations

import numpy as np

from lmspec.spec._contract import Component, ErrorCase, require
from lmspec.spec.linear_attention import bad, check_shapes, linear_cases


def lightning_attention(q, k, v, log_decay=None, initial_state=None, *, block_size: int = 16,
                        scale: float | None = None):
    """Lightning Attention; returns ``(out, final_state)``.

    Shapes and dtypes as linear_attention: ``q``, ``k`` (B, T, H, Dk); ``v`` (B, T, H, Dv);
    ``log_decay`` (H,), finite and <= 0, or None (no decay); ``initial_state``
    (B, H, Dk, Dv) or None (zeros), in the dtype of q or float32. Outputs ``out``
    (B, T, H, Dv) in the dtype of q and ``final_state`` (B, H, Dk, Dv) in float32 or wider.
    ``scale`` defaults to 1 (MiniMax-01 applies none).

    Block form, per batch and head, gamma = exp(log_decay_h), tokens in consecutive blocks of
    ``block_size`` B (the last one may be shorter, of length L <= B). With block rows
    ``Q_i, K_i, V_i`` (L rows each), KV the state before the block, and local positions
    t, s in [0, L)::

        O_intra = (Q_i K_i^T * M) V_i,          M_ts = gamma^(t - s) if s <= t else 0
        O_inter = Lambda Q_i KV,                Lambda = diag(gamma^(t + 1))
        O_i     = scale (O_intra + O_inter)
        KV     <- gamma^L KV + (Gamma K_i)^T V_i,  Gamma = diag(gamma^(L - 1 - s))

    starting from KV = initial_state (zeros when None); ``final_state`` is the last KV.
    This equals ``linear_attention(q, k, v, log_decay, initial_state,
    feature_map="identity", scale=scale)`` in every form, for every block size (the property
    the conformance suite checks).

    Gradients: with respect to q, k, v and initial_state (not log_decay, as linear_attention).

    Rejected (ValueError naming the argument): the shape errors of linear_attention,
    ``block_size < 1``, ``scale <= 0``; log_decay with a value > 0 or not finite.
    """
    check_args(q, k, v, log_decay, initial_state, block_size=block_size, scale=scale)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(q, k, v, log_decay=None, initial_state=None, *, block_size: int = 16,
               scale: float | None = None) -> None:
    check_shapes(q, k, v, log_decay, initial_state)
    require(int(block_size) == block_size and block_size >= 1, ValueError,
            f"block_size: expected an integer >= 1, got {block_size}")
    require(scale is None or scale > 0, ValueError, f"scale: expected > 0, got {scale}")


def _cases():
    return linear_cases(lightning=True)


COMPONENT = Component(
    stem="lightning_attention",
    coverage={"log_decay": ("given", "absent"), "initial_state": ("given", "absent")},
    inputs=("q", "k", "v", "log_decay", "initial_state"),
    outputs=("out", "final_state"),
    differentiable=("q", "k", "v", "initial_state"),
    wide_outputs=("final_state",),
    cases=_cases,
    errors=(
        ErrorCase("v of another length", bad({"v": (1, 2, 2, 5)}), ValueError, r"v:"),
        ErrorCase("positive log_decay", bad(log_decay=np.array([0.1, 0.0])),
                  ValueError, r"log_decay"),
        ErrorCase("block_size 0", bad(block_size=0), ValueError, r"block_size"),
        ErrorCase("non-positive scale", bad(scale=0.0), ValueError, r"scale"),
    ),
    summary="Lightning attention (MiniMax-01): intra-block masked product + inter-block state",
)
