"""Small float formats (FP8 E4M3/E5M2, FP4 E2M1) as tables of their values: encode with
round-to-nearest-even and explicit saturation, decode bit patterns. Plain NumPy, no casts.

ml_dtypes' casts do not saturate (float8_e4m3fn: 480 -> NaN), so the reference never uses them
to quantize; tests use them as an oracle inside the finite range.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Minifloat:
    """A sign-magnitude binary float: ``ebits`` exponent bits with ``bias``, ``mbits`` mantissa
    bits, subnormals; codes ``0..max_code`` are the finite non-negative values, in order."""

    name: str
    ebits: int
    mbits: int
    bias: int
    max_code: int

    @property
    def sign_bit(self) -> int:
        return 1 << (self.ebits + self.mbits)

    @cached_property
    def values(self) -> np.ndarray:
        """float64 value of every code 0 .. 2 * sign_bit - 1 (NaN/inf codes beyond max_code)."""
        codes = np.arange(2 * self.sign_bit)
        mag = codes & (self.sign_bit - 1)
        e, m = mag >> self.mbits, mag & ((1 << self.mbits) - 1)
        frac = m / 2.0**self.mbits
        v = np.where(e == 0, frac * 2.0 ** (1 - self.bias), (1 + frac) * 2.0 ** (e - self.bias))
        v = np.where(mag > self.max_code, self._special(mag), v)
        return np.where(codes & self.sign_bit, -v, v)

    def _special(self, mag: np.ndarray) -> np.ndarray:
        # E5M2 follows IEEE (all-ones exponent: inf when the mantissa is 0, else NaN); E4M3FN
        # has only NaN (S.1111.111); E2M1 has no special values (max_code covers every code)
        if self.name == "e5m2":
            return np.where(mag == (((1 << self.ebits) - 1) << self.mbits), np.inf, np.nan)
        return np.full(mag.shape, np.nan)

    @property
    def max(self) -> float:
        return float(self.values[self.max_code])

    def encode(self, y) -> np.ndarray:
        """uint8 codes of float64 ``y``: saturate |y| to ``max``, round to nearest on the grid,
        ties to the even code (even mantissa); the sign bit is y's sign (-0 for a small
        negative y). Finite ``y`` only."""
        y = np.asarray(y, np.float64)
        a = np.minimum(np.abs(y), self.max)
        grid = self.values[: self.max_code + 1]
        hi = np.clip(np.searchsorted(grid, a, side="left"), 1, self.max_code)  # grid[hi] >= a
        lo = hi - 1
        d_lo, d_hi = a - grid[lo], grid[hi] - a  # exact (Sterbenz)
        pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
        mag = np.where(pick_hi, hi, lo)
        return (mag | np.where(np.signbit(y), self.sign_bit, 0)).astype(np.uint8)

    def decode(self, codes) -> np.ndarray:
        return self.values[np.asarray(codes).astype(np.int64)]


E4M3 = Minifloat("e4m3", 4, 3, 7, 0x7E)  # float8_e4m3fn: max 448, no inf, NaN = 0x7F/0xFF
E5M2 = Minifloat("e5m2", 5, 2, 15, 0x7B)  # IEEE-like: max 57344, inf 0x7C, NaN 0x7D..0x7F
E2M1 = Minifloat("e2m1", 2, 1, 1, 0x7)  # FP4: {0, .5, 1, 1.5, 2, 3, 4, 6}, no inf or NaN

FORMATS = {f.name: f for f in (E4M3, E5M2, E2M1)}


def ceil_pow2(s) -> np.ndarray:
    """The smallest power of two >= s (s > 0), exactly (frexp, not log2)."""
    m, e = np.frexp(np.asarray(s, np.float64))
    return np.where(m == 0.5, s, np.ldexp(1.0, e))


def floor_log2(a) -> np.ndarray:
    """floor(log2(a)) for a > 0, exactly: a = m 2**e with m in [0.5, 1)."""
    _, e = np.frexp(np.asarray(a, np.float64))
    return e - 1
