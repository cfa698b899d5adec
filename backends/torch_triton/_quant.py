"""Shared pieces of the torch quantizers: float32 compute, exact power-of-two helpers,
saturating FP8 and E2M1 rounding, nibble packing."""

from __future__ import annotations

import torch

FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
FP8_MAX = {"e4m3": 448.0, "e5m2": 57344.0}
# E2M1's non-negative grid and the midpoints between neighbours (codes 0..7)
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


def compute(x: torch.Tensor) -> torch.Tensor:
    """float32 (float64 stays float64): the quotient x / scale is taken in float32 or wider."""
    return x if x.dtype == torch.float64 else x.to(torch.float32)


def amax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """max |x| along ``dim`` (removed), 0 over an empty axis (torch.amax refuses one)."""
    if x.shape[dim] == 0:
        shape = list(x.shape)
        del shape[dim]
        return x.new_zeros(shape)
    return x.abs().amax(dim=dim)


def nonzero_or_one(s: torch.Tensor) -> torch.Tensor:
    return torch.where(s > 0, s, torch.ones_like(s))


def ceil_pow2(s: torch.Tensor) -> torch.Tensor:
    """The smallest power of two >= s > 0, exactly (frexp: s = m 2**e, m in [0.5, 1))."""
    m, e = torch.frexp(s)
    return torch.where(m == 0.5, s, torch.ldexp(torch.ones_like(s), e.to(s.dtype)))


def fp8_codes(y: torch.Tensor, fmt: str) -> torch.Tensor:
    """uint8 bit patterns of RNE(saturate(y)): clamp first (torch's E5M2 cast gives inf)."""
    top = FP8_MAX[fmt]
    return y.clamp(-top, top).to(FP8_DTYPES[fmt]).view(torch.uint8)


def fp8_values(codes: torch.Tensor, fmt: str) -> torch.Tensor:
    return codes.view(FP8_DTYPES[fmt]).to(torch.float32)


def e2m1_codes(y: torch.Tensor) -> torch.Tensor:
    """4-bit codes (uint8) of y on E2M1's grid: saturate to 6, nearest, ties to the even code,
    sign bit 8 from y's sign (negative zero included)."""
    a = y.abs().clamp(max=6.0)
    mids = torch.tensor(E2M1_MIDPOINTS, dtype=a.dtype, device=a.device)
    i = torch.bucketize(a, mids)  # number of midpoints < a
    tie = (a == mids[i.clamp(max=len(E2M1_MIDPOINTS) - 1)]) & (i % 2 == 1)
    mag = i + tie.to(i.dtype)
    return (mag | torch.signbit(y).to(mag.dtype) << 3).to(torch.uint8)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(..., 2n) codes in [0, 15] -> (..., n) uint8: element 2j low nibble, 2j+1 high."""
    return q[..., 0::2] | (q[..., 1::2] << 4)
