"""Shared hypothesis strategies: nasty shapes and values, drawn so that shrinking stays useful.

Values come from a seeded NumPy generator (one drawn integer) rather than element by element:
hypothesis shrinks shapes, styles and scales, and the seed pins the values for a reproducer.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

# Sizes a reviewer tries first: empty, one, small primes and non-powers of two, a power of two.
SIZES = (0, 1, 2, 3, 5, 7, 8, 13, 16)
FEATURE_SIZES = (1, 2, 3, 8, 17, 32, 48, 64)

# Value styles: the generic case plus the ones that break kernels.
STYLES = ("normal", "uniform", "ties", "outliers", "constant")
SCALES = (1e-3, 0.1, 1.0, 4.0, 30.0)


def sizes(choices: tuple[int, ...] = SIZES, min_size: int = 0) -> st.SearchStrategy[int]:
    """A dimension from ``choices``; 0 (an empty tensor), when allowed, about one draw in ten,
    so that empty cases are always exercised but do not crowd out the informative ones."""
    nonzero = tuple(c for c in choices if c >= max(min_size, 1))
    if 0 not in choices or min_size > 0:
        return st.sampled_from(nonzero)
    return st.integers(0, 9).flatmap(lambda i: st.just(0) if i == 0 else st.sampled_from(nonzero))


def seeds() -> st.SearchStrategy[int]:
    return st.integers(min_value=0, max_value=2**31 - 1)


def make_values(shape: tuple[int, ...], seed: int, style: str, scale: float) -> np.ndarray:
    """float64 values of a given style; deterministic in (shape, seed, style, scale)."""
    rng = np.random.default_rng(seed)
    if style == "normal":
        x = rng.standard_normal(shape)
    elif style == "uniform":
        x = rng.uniform(-1.0, 1.0, shape)
    elif style == "ties":
        # few distinct values: exact ties in maxima, sorts and top-k
        x = rng.integers(-2, 3, shape).astype(np.float64)
    elif style == "outliers":
        x = rng.standard_normal(shape)
        mask = rng.uniform(size=shape) < 0.05
        x = np.where(mask, x * 50.0, x)
    elif style == "constant":
        # constant along the last axis: zero variance, uniform softmax
        x = np.broadcast_to(rng.standard_normal(shape[:-1] + (1,)), shape).copy() if shape else (
            np.array(rng.standard_normal()))
    else:
        raise ValueError(f"style: unknown value style {style!r}")
    return np.asarray(x * scale, dtype=np.float64)


@st.composite
def float_arrays(
    draw,
    shape: tuple[int, ...],
    styles: tuple[str, ...] = STYLES,
    scales: tuple[float, ...] = SCALES,
) -> np.ndarray:
    style = draw(st.sampled_from(styles))
    scale = draw(st.sampled_from(scales))
    return make_values(shape, draw(seeds()), style, scale)


@st.composite
def int_arrays(draw, shape: tuple[int, ...], low: int, high: int) -> np.ndarray:
    """int64 values in [low, high); a 'few values' draw makes repeats (scatter-add collisions)."""
    rng = np.random.default_rng(draw(seeds()))
    if high <= low:
        return np.zeros(shape, dtype=np.int64)
    if draw(st.booleans()):
        high = min(high, low + 2)
    return rng.integers(low, high, shape).astype(np.int64)


def leading_shapes(max_dims: int = 2) -> st.SearchStrategy[tuple[int, ...]]:
    """Batch-like leading dimensions, including empty batches and the scalar-row case ()."""
    return st.lists(sizes((0, 1, 2, 3, 5)), min_size=0, max_size=max_dims).map(tuple)


def nonempty(choices: tuple[int, ...]) -> st.SearchStrategy[int]:
    return sizes(choices, min_size=1)
