"""FP8 E4M3/E5M2 quantization in jitted JAX: per tensor, token, 1x128 tile, 128x128 block
(DeepSeek-V3), optional power-of-two scale, explicit saturation before the float8 cast."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lmspec.backends.jax_xla._quant import (
    F32,
    FP8_MAX,
    TINY_LIFTED,
    amax,
    ceil_pow2,
    div,
    fp8_codes,
    has_tiny,
    lift,
    lifted_scale,
    nonzero_or_one,
    unlift,
)
from lmspec.spec.quant_fp8 import BLOCK, TILE, check_args


def _group_amax(xf, granularity: str):
    if granularity == "tensor":
        return amax(xf, None)
    if granularity == "token":
        return amax(xf, -1)
    if granularity == "tile":  # (..., D) -> (..., ceil(D / 128), 128), zero-padded
        d = xf.shape[-1]
        t = jnp.pad(xf, [(0, 0)] * (xf.ndim - 1) + [(0, -d % TILE)])
        return amax(t.reshape(*xf.shape[:-1], -(-d // TILE), TILE), -1)
    m, n = xf.shape  # (out, in) -> (ceil(out/128), 128, ceil(in/128), 128)
    b = jnp.pad(xf, [(0, -m % BLOCK), (0, -n % BLOCK)])
    return amax(b.reshape(-(-m // BLOCK), BLOCK, -(-n // BLOCK), BLOCK), (1, 3))


def _expand(s, shape, granularity: str):
    if granularity == "tensor":
        return s
    if granularity == "token":
        return s[..., None]
    if granularity == "tile":
        return jnp.repeat(s, TILE, axis=-1)[..., : shape[-1]]
    s = jnp.repeat(jnp.repeat(s, BLOCK, axis=0), BLOCK, axis=1)
    return s[: shape[0], : shape[1]]


@functools.partial(jax.jit, static_argnames=("fmt", "granularity", "pow2_scale", "lifted"))
def _quant_fp8(x, scale, *, fmt: str, granularity: str, pow2_scale: bool, lifted: bool):
    xf = x.astype(F32)
    if scale is not None:
        scales = scale.astype(F32)
        return fp8_codes(div(xf, _expand(scales, x.shape, granularity)), fmt), scales
    scales = nonzero_or_one(div(_group_amax(xf, granularity), FP8_MAX[fmt]))
    scales = ceil_pow2(scales) if pow2_scale else scales
    y = div(xf, _expand(scales, x.shape, granularity))
    if not lifted:
        return fp8_codes(y, fmt), scales
    # groups with amax < 2**-60, lifted by 2**64 past XLA CPU's flush of subnormals (_quant)
    xl = lift(xf)
    al = _group_amax(xl, granularity)
    tiny = al < TINY_LIFTED
    sl = lifted_scale(al, FP8_MAX[fmt])
    sl = jnp.where(sl > 0, sl, F32(2.0**64))  # scale 1 where it underflows (or amax is 0)
    sl = ceil_pow2(sl) if pow2_scale else sl  # exact on lifted (normal) values
    scales = jnp.where(tiny, unlift(sl), scales)
    y = jnp.where(_expand(tiny, x.shape, granularity),
                  div(xl, _expand(sl, x.shape, granularity)), y)
    return fp8_codes(y, fmt), scales


def quant_fp8(x, scale=None, *, fmt: str = "e4m3", granularity: str = "tensor",
              pow2_scale: bool = False):
    check_args(x, scale, fmt=fmt, granularity=granularity, pow2_scale=pow2_scale)
    return _quant_fp8(x, scale, fmt=fmt, granularity=granularity, pow2_scale=bool(pow2_scale),
                      lifted=scale is None and has_tiny(x))
