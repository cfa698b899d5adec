"""Rotary position embedding (Su et al., 2021) with the context-extension scalings in use.

Conventions: half-split pairs (GPT-NeoX, HF Llama) and interleaved pairs (GPT-J, DeepSeek's
own code); partial rotary dimension; arbitrary integer positions; frequency scalings:
linear (position interpolation, Chen et al. 2023), NTK-aware (bloc97, 2023), YaRN (Peng et al.
2023, with its attention temperature), and Llama 3's (Meta, 2024). Formulas follow HF
transformers' ``modeling_rope_utils``, which the reference is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, is_integer_array, require, shape_of

KINDS = ("linear", "ntk", "yarn", "llama3")


@dataclass(frozen=True)
class RopeScaling:
    """Frequency scaling for context extension.

    - ``linear``: ``inv_freq / factor`` (positions interpolated by ``factor``).
    - ``ntk``: static NTK-aware base change ``theta * factor ** (r / (r - 2))``, r the rotary
      dimension (needs r > 2).
    - ``yarn``: per-frequency blend of interpolation and extrapolation. With
      ``dim(n) = r * ln(L / (2 pi n)) / (2 ln theta)``, L = ``original_max_position``:
      ``low = max(floor(dim(beta_fast)), 0)``, ``high = min(ceil(dim(beta_slow)), r - 1)``
      (no floor/ceil when ``truncate`` is False); ``ramp_i = clip((i - low) / (high - low), 0,
      1)`` for i < r/2 (``high += 0.001`` when equal); ``extra_i = 1 - ramp_i``;
      ``inv_freq = inv_freq / factor * (1 - extra) + inv_freq * extra``. Attention temperature:
      cos and sin are multiplied by ``attention_factor``, default ``0.1 ln(factor) + 1``
      (1 when factor <= 1).
    - ``llama3``: wavelengths ``w = 2 pi / inv_freq``; ``w > L / low_freq_factor``: divide by
      ``factor``; ``w < L / high_freq_factor``: keep; between: ``(1 - s) inv_freq / factor +
      s inv_freq`` with ``s = (L / w - low_freq_factor) / (high_freq_factor - low_freq_factor)``.
    """

    kind: str
    factor: float = 1.0
    original_max_position: int = 2048
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    truncate: bool = True

    def __post_init__(self) -> None:
        require(self.kind in KINDS, ValueError,
                f"scaling.kind: expected one of {KINDS}, got {self.kind!r}")
        require(self.factor > 0, ValueError, f"scaling.factor: expected > 0, got {self.factor}")
        require(self.original_max_position > 0, ValueError,
                "scaling.original_max_position: expected > 0")
        if self.kind == "llama3":
            require(self.high_freq_factor > self.low_freq_factor, ValueError,
                    "scaling.high_freq_factor: expected > low_freq_factor")


def rope(x, positions, *, theta: float = 10000.0, rotary_dim: int | None = None,
         interleaved: bool = False, scaling: RopeScaling | None = None):
    """Rotate feature pairs of ``x`` by angles ``positions * inv_freq``.

    Shapes: ``x`` (B, T, H, D); ``positions`` (B, T) integer, any values >= 0 (a KV-cache
    offset is just larger positions). ``rotary_dim`` r (default D) is even, 2 <= r <= D: the
    first r features rotate, features r.. pass through unchanged. Output: shape and dtype of x.

    Frequencies: ``inv_freq_i = theta ** (-2i / r)`` for i in [0, r/2), then ``scaling``.
    Angle ``a[b, t, i] = positions[b, t] * inv_freq_i`` (computed in float64 in the reference;
    backends must keep angles accurate at large positions, e.g. in float32).

    Pairing: half-split (``interleaved=False``) rotates ``(x_i, x_{i + r/2})``; interleaved
    rotates ``(x_{2i}, x_{2i+1})``. Each pair ``(u, v)`` becomes
    ``(u cos a - v sin a, u sin a + v cos a) * m`` with ``m`` the YaRN attention factor (1
    otherwise). The two conventions are the same map conjugated by the fixed permutation
    that sends interleaved index 2i -> i and 2i+1 -> i + r/2.

    Gradient: with respect to ``x`` (the transposed rotation).

    Rejected: ``x`` not 4-D, ``positions`` not (B, T) or not integer, odd or out-of-range
    ``rotary_dim``, ``theta <= 0``, ntk scaling with r <= 2 (ValueError/TypeError naming the
    argument). Negative positions are outside the domain (rejected by the reference).
    """
    check_args(x, positions, theta=theta, rotary_dim=rotary_dim, interleaved=interleaved,
               scaling=scaling)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(x, positions, *, theta: float = 10000.0, rotary_dim: int | None = None,
               interleaved: bool = False, scaling: RopeScaling | None = None) -> None:
    xs, ps = shape_of(x), shape_of(positions)
    require(len(xs) == 4, ValueError, f"x: expected shape (B, T, H, D), got {xs}")
    require(ps == xs[:2], ValueError, f"positions: expected shape {xs[:2]} (B, T), got {ps}")
    require(is_integer_array(positions), TypeError,
            f"positions: expected an integer array, got dtype {positions.dtype}")
    r = xs[3] if rotary_dim is None else rotary_dim
    require(r % 2 == 0 and 2 <= r <= xs[3], ValueError,
            f"rotary_dim: expected an even value in [2, {xs[3]}], got {r}")
    require(theta > 0, ValueError, f"theta: expected > 0, got {theta}")
    if scaling is not None:
        require(isinstance(scaling, RopeScaling), TypeError,
                f"scaling: expected a RopeScaling or None, got {type(scaling).__name__}")
        require(scaling.kind != "ntk" or r > 2, ValueError,
                "rotary_dim: ntk scaling needs rotary_dim > 2")


def scalings() -> st.SearchStrategy[RopeScaling | None]:
    factor = st.sampled_from((0.5, 1.0, 2.0, 8.0, 32.0))
    orig = st.sampled_from((16, 64, 2048, 8192))
    return st.one_of(
        st.none(),
        st.builds(RopeScaling, kind=st.just("linear"), factor=factor),
        st.builds(RopeScaling, kind=st.just("ntk"), factor=factor),
        st.builds(RopeScaling, kind=st.just("yarn"), factor=factor, original_max_position=orig,
                  beta_fast=st.sampled_from((32.0, 4.0)), beta_slow=st.sampled_from((1.0, 0.5)),
                  attention_factor=st.sampled_from((None, 1.0, 0.7)),
                  truncate=st.booleans()),
        st.builds(RopeScaling, kind=st.just("llama3"), factor=factor, original_max_position=orig,
                  low_freq_factor=st.sampled_from((1.0, 2.0)),
                  high_freq_factor=st.sampled_from((4.0, 8.0))),
    )


@st.composite
def positions_for(draw, b: int, t: int) -> np.ndarray:
    """Positions as they occur: arange with a cache offset, or arbitrary (packed, shuffled)."""
    if draw(st.booleans()):
        offset = draw(st.sampled_from((0, 1, 7, 1000, 100_000)))
        return np.broadcast_to(np.arange(t) + offset, (b, t)).astype(np.int64).copy()
    return draw(S.int_arrays((b, t), 0, draw(st.sampled_from((4, 64, 1 << 17)))))


@st.composite
def _cases(draw) -> Case:
    b, t = draw(S.sizes((0, 1, 2))), draw(S.sizes((0, 1, 3, 8)))
    h = draw(S.sizes((1, 2, 3), min_size=1))
    d = draw(st.sampled_from((2, 4, 6, 8, 16, 24)))
    r = draw(st.sampled_from(tuple(sorted({d, 2 * max(1, d // 4), 2} & set(range(2, d + 1, 2))))))
    scaling = draw(scalings())
    if scaling is not None and scaling.kind == "ntk" and r <= 2:
        r = d if d > 2 else None
        if r is None:
            scaling = None
    params = {"theta": draw(st.sampled_from((10000.0, 500000.0, 10.0))),
              "rotary_dim": r if r != d else draw(st.sampled_from((None, d))),
              "interleaved": draw(st.booleans()), "scaling": scaling}
    return Case({"x": draw(S.float_arrays((b, t, h, d))), "positions": draw(positions_for(b, t))},
                params)


def _bad(**params):
    return lambda: ({"x": np.ones((1, 2, 1, 6)), "positions": np.zeros((1, 2), np.int64)}, params)


def _features(case: Case) -> dict[str, str]:
    """Partial rotary dimension: the last features pass through unrotated."""
    r = case.params.get("rotary_dim")
    return {"rotary_dim": "full" if r is None or r == case.arrays["x"].shape[-1] else "partial"}


COMPONENT = Component(
    stem="rope",
    features=_features,
    coverage={"scaling": ("None", "linear", "llama3", "ntk", "yarn"),
              "interleaved": ("True", "False"), "rotary_dim": ("full", "partial")},
    inputs=("x", "positions"),
    outputs=("y",),
    differentiable=("x",),
    integer_inputs=("positions",),
    cases=_cases,
    errors=(
        ErrorCase("odd rotary_dim", _bad(rotary_dim=3), ValueError, r"rotary_dim"),
        ErrorCase("rotary_dim above D", _bad(rotary_dim=8), ValueError, r"rotary_dim"),
        ErrorCase("positions of the wrong shape",
                  lambda: ({"x": np.ones((1, 2, 1, 6)), "positions": np.zeros((2,), np.int64)},
                           {}), ValueError, r"positions"),
        ErrorCase("float positions",
                  lambda: ({"x": np.ones((1, 2, 1, 6)), "positions": np.zeros((1, 2))}, {}),
                  TypeError, r"positions"),
    ),
    summary="RoPE: half-split/interleaved, partial, any positions; linear/NTK/YaRN/Llama-3",
)
