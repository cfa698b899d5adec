"""RoPE (Su et al., 2021) via HF transformers' rotary embedding and apply functions.

Frequencies and cos/sin: ``GPTNeoXRotaryEmbedding`` built from a config whose
``rope_parameters`` carry the scaling (``modeling_rope_utils``). It is Llama's rotary
embedding line for line, except that its default rope honours ``partial_rotary_factor``
(Llama's ignores it). Rotation: GPT-NeoX's ``apply_rotary_pos_emb`` (half-split, rotary part
first, the rest passed through) or DeepSeek-V3's ``apply_rotary_pos_emb_interleave``.
"""

from __future__ import annotations

from functools import cache

import torch
from transformers import GPTNeoXConfig
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
    apply_rotary_pos_emb_interleave,
)
from transformers.models.gpt_neox.modeling_gpt_neox import (
    GPTNeoXRotaryEmbedding,
    apply_rotary_pos_emb,
)

from lmspec.spec.rope import RopeScaling, check_args


def _rope_parameters(r: int, theta: float, scaling: RopeScaling | None) -> dict:
    """HF's rope_parameters dict (transformers 5.x keys) for rotary dim r."""
    if scaling is None:
        return {"rope_type": "default", "rope_theta": theta}
    if scaling.kind == "ntk":
        # adapter: HF's "dynamic" NTK recomputes theta from the sequence length; the spec's
        # static NTK is plain rope with the adjusted base
        return {"rope_type": "default", "rope_theta": theta * scaling.factor ** (r / (r - 2))}
    params = {"rope_type": scaling.kind, "rope_theta": theta, "factor": scaling.factor}
    if scaling.kind == "yarn":
        params.update(original_max_position_embeddings=scaling.original_max_position,
                      beta_fast=scaling.beta_fast, beta_slow=scaling.beta_slow,
                      attention_factor=scaling.attention_factor, truncate=scaling.truncate)
    elif scaling.kind == "llama3":
        params.update(original_max_position_embeddings=scaling.original_max_position,
                      low_freq_factor=scaling.low_freq_factor,
                      high_freq_factor=scaling.high_freq_factor)
    return params


@cache
def _rotary(d: int, r: int, theta: float, scaling: RopeScaling | None) -> GPTNeoXRotaryEmbedding:
    params = _rope_parameters(r, theta, scaling)
    head_dim = d
    if int(d * (r / d)) != r:
        # HF computes the rotary dim as int(head_dim * partial_rotary_factor), which truncates
        # when r / d is inexact (d=44, r=30 gives 29); a head of r features gives the same
        # frequencies
        head_dim = r
    params["partial_rotary_factor"] = r / head_dim
    # max_position = original * factor (and above original), which HF's config validation
    # expects for YaRN and Llama 3; unused otherwise (no dynamic rope here)
    orig = scaling.original_max_position if scaling is not None else 2048
    factor = scaling.factor if scaling is not None else 1.0
    config = GPTNeoXConfig(hidden_size=head_dim, num_attention_heads=1, rope_parameters=params,
                           max_position_embeddings=max(int(orig * factor), orig + 1))
    return GPTNeoXRotaryEmbedding(config)


def _interleave(y: torch.Tensor) -> torch.Tensor:
    """(..., r) in half-split layout [u_0..u_{r/2-1}, v_0..] -> interleaved [u_0, v_0, ...]."""
    u, v = y.chunk(2, dim=-1)
    return torch.stack((u, v), dim=-1).flatten(-2)


def rope(x, positions, *, theta: float = 10000.0, rotary_dim: int | None = None,
         interleaved: bool = False, scaling: RopeScaling | None = None):
    check_args(x, positions, theta=theta, rotary_dim=rotary_dim, interleaved=interleaved,
               scaling=scaling)
    d = x.shape[-1]
    r = d if rotary_dim is None else rotary_dim
    cos, sin = _rotary(d, r, theta, scaling)(x, positions)  # (B, T, r) each, in x.dtype
    if not interleaved:
        y, _ = apply_rotary_pos_emb(x, x, cos, sin, unsqueeze_dim=2)  # x is (B, T, H, D)
        return y
    xr = x[..., :r]
    y, _ = apply_rotary_pos_emb_interleave(xr, xr, cos, sin, unsqueeze_dim=2)
    # adapter: DeepSeek-V3's function returns the rotated pairs de-interleaved (half-split
    # layout; harmless for q.k, both permuted alike); the spec keeps x's layout
    return torch.cat((_interleave(y), x[..., r:]), dim=-1)
