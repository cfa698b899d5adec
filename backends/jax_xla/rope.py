"""Rotary position embedding (Su et al., 2021) in jitted JAX, with HF's frequency scalings.

inv_freq is computed once per (rotary_dim, theta, scaling) on the host in float64 (formulas of
HF ``modeling_rope_utils``), then rounded to float32; angles are float32 positions * inv_freq.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from lmspec.backends.jax_xla._common import F32, f32
from lmspec.spec.rope import RopeScaling, check_args


def _yarn(inv_freq: np.ndarray, r: int, theta: float, s: RopeScaling) -> np.ndarray:
    def correction_dim(n_rot: float) -> float:
        return r * math.log(s.original_max_position / (n_rot * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, r - 1)
    if low == high:
        high += 0.001  # HF's guard against a zero-width ramp
    ramp = np.clip((np.arange(r // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    extrapolation = 1.0 - ramp
    return inv_freq / s.factor * (1.0 - extrapolation) + inv_freq * extrapolation


def _llama3(inv_freq: np.ndarray, s: RopeScaling) -> np.ndarray:
    low_wavelen = s.original_max_position / s.low_freq_factor
    high_wavelen = s.original_max_position / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled)


@functools.cache
def frequencies(r: int, theta: float, scaling: RopeScaling | None) -> tuple[np.ndarray, float]:
    """(inv_freq (r/2,) float32, attention factor): host-side, once per static configuration."""
    if scaling is not None and scaling.kind == "ntk":
        theta = theta * scaling.factor ** (r / (r - 2))
    inv_freq = 1.0 / theta ** (np.arange(0, r, 2, dtype=np.float64) / r)  # (r/2,) float64
    mscale = 1.0
    if scaling is not None and scaling.kind == "linear":
        inv_freq = inv_freq / scaling.factor
    elif scaling is not None and scaling.kind == "llama3":
        inv_freq = _llama3(inv_freq, scaling)
    elif scaling is not None and scaling.kind == "yarn":
        inv_freq = _yarn(inv_freq, r, theta, scaling)
        mscale = scaling.attention_factor
        if mscale is None:
            mscale = 1.0 if scaling.factor <= 1 else 0.1 * math.log(scaling.factor) + 1.0
    return inv_freq.astype(np.float32), float(mscale)


def _split(x, r: int, interleaved: bool):
    xr = x[..., :r]
    return (xr[..., 0::2], xr[..., 1::2]) if interleaved else (xr[..., : r // 2], xr[..., r // 2:])


def _join(u, v, rest, interleaved: bool):
    if interleaved:
        rot = jnp.stack([u, v], axis=-1).reshape(u.shape[:-1] + (2 * u.shape[-1],))
    else:
        rot = jnp.concatenate([u, v], axis=-1)
    return jnp.concatenate([rot, rest], axis=-1)


@functools.partial(jax.jit, static_argnames=("theta", "r", "interleaved", "scaling"))
def _rope(x, positions, *, theta: float, r: int, interleaved: bool, scaling):
    inv_freq, mscale = frequencies(r, theta, scaling)
    angles = positions.astype(F32)[..., None] * jnp.asarray(inv_freq)  # (B, T, r/2) float32
    cos = (jnp.cos(angles) * np.float32(mscale))[:, :, None, :]  # (B, T, 1, r/2)
    sin = (jnp.sin(angles) * np.float32(mscale))[:, :, None, :]
    u, v = _split(f32(x), r, interleaved)
    out = _join(u * cos - v * sin, u * sin + v * cos, f32(x[..., r:]), interleaved)
    return out.astype(x.dtype)


def rope(x, positions, *, theta: float = 10000.0, rotary_dim: int | None = None,
         interleaved: bool = False, scaling: RopeScaling | None = None):
    check_args(x, positions, theta=theta, rotary_dim=rotary_dim, interleaved=interleaved,
               scaling=scaling)
    r = x.shape[-1] if rotary_dim is None else rotary_dim
    return _rope(x, positions, theta=float(theta), r=int(r), interleaved=bool(interleaved),
                 scaling=scaling)
