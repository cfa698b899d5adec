"""RoPE (Su et al., 2021) with HF ``modeling_rope_utils`` scalings; Triton kernel on CUDA."""

from __future__ import annotations

import math

import torch

from lmspec.backends.torch_triton._dispatch import kernel_dtype, on_cuda
from lmspec.spec.rope import RopeScaling, check_args


def _yarn(inv_freq: torch.Tensor, r: int, theta: float, s: RopeScaling) -> torch.Tensor:
    def correction_dim(n_rot: float) -> float:
        return r * math.log(s.original_max_position / (n_rot * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, r - 1)
    if low == high:
        high += 0.001
    i = torch.arange(r // 2, dtype=torch.float64)
    extrapolation = 1.0 - ((i - low) / (high - low)).clamp(0.0, 1.0)
    return inv_freq / s.factor * (1.0 - extrapolation) + inv_freq * extrapolation


def _llama3(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > s.original_max_position / s.low_freq_factor,
                         inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= s.original_max_position / s.high_freq_factor) & (
        wavelen <= s.original_max_position / s.low_freq_factor)
    return torch.where(medium, smoothed, scaled)


def frequencies(r: int, theta: float, scaling: RopeScaling | None) -> tuple[torch.Tensor, float]:
    """(inv_freq (r/2,) float64 on the CPU, the YaRN attention factor for cos and sin)."""
    if scaling is not None and scaling.kind == "ntk":
        theta = theta * scaling.factor ** (r / (r - 2))
    inv_freq = 1.0 / theta ** (torch.arange(0, r, 2, dtype=torch.float64) / r)
    if scaling is None or scaling.kind == "ntk":
        return inv_freq, 1.0
    if scaling.kind == "linear":
        return inv_freq / scaling.factor, 1.0
    if scaling.kind == "llama3":
        return _llama3(inv_freq, scaling), 1.0
    factor = scaling.attention_factor
    if factor is None:
        factor = 1.0 if scaling.factor <= 1 else 0.1 * math.log(scaling.factor) + 1.0
    return _yarn(inv_freq, r, theta, scaling), factor


def cos_sin(positions: torch.Tensor, r: int, theta: float, scaling: RopeScaling | None,
            dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (B, T, r/2) in ``dtype``; angles in float64, exact at any position."""
    inv_freq, mscale = frequencies(r, theta, scaling)
    angles = positions.to(torch.float64)[..., None] * inv_freq.to(positions.device)  # (B, T, r/2)
    return (torch.cos(angles) * mscale).to(dtype), (torch.sin(angles) * mscale).to(dtype)


def rope(x, positions, *, theta: float = 10000.0, rotary_dim: int | None = None,
         interleaved: bool = False, scaling: RopeScaling | None = None):
    return forward(x, positions, theta, rotary_dim, interleaved, scaling,
                   kernel=on_cuda(x, positions))


def forward(x, positions, theta: float, rotary_dim: int | None, interleaved: bool,
            scaling: RopeScaling | None, *, kernel: bool):
    """Checks the arguments, then runs the Triton kernel (``kernel``) or the torch path."""
    check_args(x, positions, theta=theta, rotary_dim=rotary_dim, interleaved=interleaved,
               scaling=scaling)
    if positions.numel() and int(positions.min()) < 0:
        raise ValueError(f"positions: expected values >= 0, got {int(positions.min())}")
    r = x.shape[-1] if rotary_dim is None else rotary_dim
    if kernel and kernel_dtype(x):
        from lmspec.backends.torch_triton.kernels.rope import rope as rope_triton

        return rope_triton(x, positions, r, theta, interleaved, scaling)
    return _rope_torch(x, positions, r, theta, interleaved, scaling)


def _rope_torch(x, positions, r: int, theta: float, interleaved: bool, scaling):
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    cos, sin = cos_sin(positions, r, theta, scaling, compute)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # (B, T, 1, r/2)
    xr = x[..., :r].to(compute)  # (B, T, H, r)
    u, v = (xr[..., 0::2], xr[..., 1::2]) if interleaved else (xr[..., : r // 2], xr[..., r // 2:])
    ru, rv = u * cos - v * sin, u * sin + v * cos  # (B, T, H, r/2) each
    rot = torch.stack((ru, rv), -1).flatten(-2) if interleaved else torch.cat((ru, rv), -1)
    return torch.cat((rot.to(x.dtype), x[..., r:]), dim=-1)
