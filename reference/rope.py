"""RoPE reference (Su et al., 2021) and the frequency scalings of HF ``modeling_rope_utils``."""

from __future__ import annotations

import math

import numpy as np

from lmspec.reference._numerics import _acc, f
from lmspec.spec.rope import RopeScaling, check_args


def _yarn(inv_freq: np.ndarray, r: int, theta: float, s: RopeScaling) -> np.ndarray:
    def correction_dim(n_rot: float) -> float:
        return r * math.log(s.original_max_position / (n_rot * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, r - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(r // 2, dtype=inv_freq.dtype) - low) / (high - low), 0.0, 1.0)
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


def rope_frequencies(rotary_dim: int, theta: float = 10000.0,
                     scaling: RopeScaling | None = None,
                     dtype=np.float64) -> tuple[np.ndarray, float]:
    """(inv_freq of shape (rotary_dim // 2,), attention factor for cos/sin).

    Computed in ``dtype`` throughout (float64 for the oracle; float32 in the naive baseline, as
    implementations compute them: HF does this arithmetic in float32), returned as float64.
    """
    r = rotary_dim
    if scaling is not None and scaling.kind == "ntk":
        theta = theta * scaling.factor ** (r / (r - 2))
    exponent = np.arange(0, r, 2, dtype=dtype) / np.asarray(r, dtype)
    inv_freq = np.asarray(1.0, dtype) / np.asarray(theta, dtype) ** exponent
    if scaling is None or scaling.kind == "ntk":
        return inv_freq.astype(np.float64), 1.0
    if scaling.kind == "linear":
        return (inv_freq / scaling.factor).astype(np.float64), 1.0
    if scaling.kind == "llama3":
        return _llama3(inv_freq, scaling).astype(np.float64), 1.0
    attention_factor = scaling.attention_factor
    if attention_factor is None:
        attention_factor = 1.0 if scaling.factor <= 1 else 0.1 * math.log(scaling.factor) + 1.0
    return _yarn(inv_freq, r, theta, scaling).astype(np.float64), attention_factor


def _cos_sin(positions, r, theta, scaling):
    """cos and sin of the angles, (B, T, 1, r/2), computed in the accumulation dtype."""
    acc = _acc()
    inv_freq, mscale = rope_frequencies(r, theta, scaling, dtype=acc)
    angles = np.asarray(positions, dtype=acc)[..., None] * inv_freq.astype(acc)  # (B, T, r/2)
    cos = f(np.cos(angles) * acc.type(mscale))[:, :, None, :]
    sin = f(np.sin(angles) * acc.type(mscale))[:, :, None, :]
    return cos, sin


def _split(x, r, interleaved):
    xr = x[..., :r]
    return (xr[..., 0::2], xr[..., 1::2]) if interleaved else (xr[..., : r // 2], xr[..., r // 2:])


def _join(u, v, rest, interleaved):
    if interleaved:
        rot = np.stack([u, v], axis=-1).reshape(u.shape[:-1] + (2 * u.shape[-1],))
    else:
        rot = np.concatenate([u, v], axis=-1)
    return np.concatenate([rot, rest], axis=-1)


def _check_positions(positions):
    positions = np.asarray(positions)
    if positions.size and positions.min() < 0:
        raise ValueError(f"positions: expected values >= 0, got {int(positions.min())}")


def rope(x, positions, *, theta=10000.0, rotary_dim=None, interleaved=False, scaling=None):
    check_args(x, positions, theta=theta, rotary_dim=rotary_dim, interleaved=interleaved,
               scaling=scaling)
    _check_positions(positions)
    x = f(x)
    r = x.shape[-1] if rotary_dim is None else rotary_dim
    cos, sin = _cos_sin(positions, r, theta, scaling)
    u, v = _split(x, r, interleaved)
    ru = f(f(u * cos) - f(v * sin))
    rv = f(f(u * sin) + f(v * cos))
    return _join(ru, rv, x[..., r:], interleaved)


def rope_vjp(dy, x, positions, *, theta=10000.0, rotary_dim=None, interleaved=False,
             scaling=None):
    dy = f(dy)
    r = dy.shape[-1] if rotary_dim is None else rotary_dim
    cos, sin = _cos_sin(positions, r, theta, scaling)
    du, dv = _split(dy, r, interleaved)
    # the transpose of the rotation [[cos, -sin], [sin, cos]]
    gu = f(f(du * cos) + f(dv * sin))
    gv = f(f(dv * cos) - f(du * sin))
    return {"x": _join(gu, gv, dy[..., r:], interleaved)}


def _angle_scale(positions, rotary_dim, theta, scaling) -> float:
    """Largest |angle| in radians (at least 1): float32 angles err by ulps of this."""
    inv_freq, _ = rope_frequencies(rotary_dim, theta, scaling)
    top = float(np.max(np.asarray(positions), initial=0)) * float(inv_freq.max(initial=0.0))
    return max(1.0, top)


def rope_magnitude(x, positions, *, theta=10000.0, rotary_dim=None, interleaved=False,
                   scaling=None):
    """Error scale of a correct rope: |x| times the largest angle (an angle of a radians is
    only known to ulps of a in the compute dtype; sin/cos carry that error to the output)."""
    x = np.asarray(x, np.float64)
    r = x.shape[-1] if rotary_dim is None else rotary_dim
    _, mscale = rope_frequencies(r, theta, scaling)
    scale = float(np.abs(x).max(initial=0.0)) * max(1.0, mscale)
    return np.asarray(scale * _angle_scale(positions, r, theta, scaling))


def rope_vjp_magnitude(dy, x, positions, **params):
    return {"x": rope_magnitude(dy, positions, **params)}
