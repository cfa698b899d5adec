"""FP4 E2M1 quantization in jitted JAX: per-tensor E2M1, MXFP4 (E8M0 per 32), NVFP4 (E4M3 per
16 and a float32 tensor scale); codes packed two per byte, low nibble first."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lmspec.backends.jax_xla._quant import (
    F32,
    amax,
    div,
    e2m1_codes,
    fp8_codes,
    fp8_values,
    nonzero_or_one,
    pack_nibbles,
)
from lmspec.spec.quant_fp4 import BLOCK, E2M1_MAX, E4M3_MAX, E8M0_BIAS, MX_EMAX, check_args


def _blocks(xf, fmt: str):
    return xf.reshape(*xf.shape[:-1], xf.shape[-1] // BLOCK[fmt], BLOCK[fmt])


def _mxfp4(xf):
    b = _blocks(xf, "mxfp4")  # (..., D/32, 32)
    a = amax(b, -1)
    e = jnp.frexp(a)[1] - 1 - MX_EMAX  # floor(log2 amax) - 2, exactly
    e = jnp.clip(jnp.where(a > 0, e, -E8M0_BIAS), -E8M0_BIAS, E8M0_BIAS)
    y = jnp.ldexp(b, -e[..., None])  # x / 2**e, exact
    return y.reshape(xf.shape), (e + E8M0_BIAS).astype(jnp.uint8), jnp.ones((), F32)


def _nvfp4(xf, tensor_scale):
    if tensor_scale is None:
        t = nonzero_or_one(div(amax(xf, None), E2M1_MAX * E4M3_MAX))
    else:
        t = jnp.asarray(tensor_scale, F32)
    b = _blocks(xf, "nvfp4")  # (..., D/16, 16)
    codes = fp8_codes(div(amax(b, -1), E2M1_MAX * t), "e4m3")
    s = (fp8_values(codes, "e4m3") * t)[..., None]
    y = jnp.where(s > 0, div(b, jnp.where(s > 0, s, 1.0)), 0.0)  # code 0 in a zero-scale block
    return y.reshape(xf.shape), codes, t


@functools.partial(jax.jit, static_argnames=("fmt", "tensor_scale"))
def _quant_fp4(x, *, fmt: str, tensor_scale: float | None):
    xf = x.astype(F32)
    if fmt == "e2m1":
        scales = nonzero_or_one(div(amax(xf, None), E2M1_MAX))
        y, t = div(xf, scales), jnp.ones((), F32)
    elif fmt == "mxfp4":
        y, scales, t = _mxfp4(xf)
    else:
        y, scales, t = _nvfp4(xf, tensor_scale)
    return pack_nibbles(e2m1_codes(y)), scales, t


def quant_fp4(x, *, fmt: str = "mxfp4", tensor_scale: float | None = None):
    check_args(x, fmt=fmt, tensor_scale=tensor_scale)
    ts = None if tensor_scale is None else float(tensor_scale)
    return _quant_fp4(x, fmt=fmt, tensor_scale=ts)
