"""Conformance of rope: forward, gradient, error inputs, and the rotation's properties."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec.rope import COMPONENT, RopeScaling

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


def _rotary_dim(case: Case) -> int:
    r = case.params["rotary_dim"]
    return case.arrays["x"].shape[-1] if r is None else r


def _to_half_split(x: np.ndarray, r: int) -> np.ndarray:
    """Permute features so that interleaved pair (2i, 2i+1) lands on half-split pair (i, i+r/2)."""
    return np.concatenate([x[..., 0:r:2], x[..., 1:r:2], x[..., r:]], axis=-1)


def _from_half_split(y: np.ndarray, r: int) -> np.ndarray:
    out = y.copy()
    out[..., 0:r:2], out[..., 1:r:2] = y[..., : r // 2], y[..., r // 2: r]
    return out


@given(case=COMPONENT.cases())
def test_interleaved_is_permuted_half_split(target, case):
    """rope_interleaved(x) == P^-1 rope_half(P x) for the fixed pairing permutation P."""
    r = _rotary_dim(case)
    x = case.arrays["x"]
    inter = Case(case.arrays, dict(case.params, interleaved=True))
    half = Case(dict(case.arrays, x=_to_half_split(x, r)), dict(case.params, interleaved=False))
    check.check_same(target, "interleaved_vs_half", STEM, inter, half,
                     view_b=lambda o: _from_half_split(o[0], r))


@given(case=COMPONENT.cases())
def test_preserves_norms(target, case):
    """Without YaRN's attention factor, rotation preserves each head vector's norm: compare to
    position 0, where the rotation is the identity."""
    scaling = case.params["scaling"]
    if scaling is not None and scaling.kind == "yarn":
        return
    zero = Case(dict(case.arrays, positions=np.zeros_like(case.arrays["positions"])), case.params)
    check.check_same(target, "norm", STEM, case, zero,
                     view_a=lambda o: np.linalg.norm(o[0], axis=-1),
                     view_b=lambda o: np.linalg.norm(o[0], axis=-1))


@given(case=COMPONENT.cases(), p=st.integers(0, 2048), s=st.integers(0, 2048),
       shift=st.sampled_from((1, 5, 100, 4096)))
def test_depends_only_on_relative_position(target, case, p, s, shift):
    """<rope(q, p), rope(k, s)> == <rope(q, p + c), rope(k, s + c)>: q and k ride in one call as
    the two tokens of a (1, 2, H, D) input."""
    x = case.arrays["x"]
    if x.shape[0] == 0 or x.shape[1] < 2:
        return
    qk = x[:1, :2]  # (1, 2, H, D): token 0 is q, token 1 is k

    def dots(o):  # (1, 2, H, D) -> (H,)
        return np.einsum("hd,hd->h", o[0][0, 0], o[0][0, 1])

    near = Case({"x": qk, "positions": np.array([[p, s]], np.int64)}, case.params)
    far = Case({"x": qk, "positions": np.array([[p + shift, s + shift]], np.int64)}, case.params)
    check.check_same(target, "relative_position", STEM, near, far, view_a=dots, view_b=dots)


@given(case=COMPONENT.cases(), factor=st.sampled_from((2.0, 8.0, 40.0)))
def test_yarn_temperature_scales_the_rotated_features(target, case, factor):
    """YaRN's attention factor m = 0.1 ln(factor) + 1 multiplies cos and sin: the result equals
    m times the same rotation with the factor set to 1 (pass-through features unscaled)."""
    r = _rotary_dim(case)
    m = 0.1 * np.log(factor) + 1.0
    default = RopeScaling("yarn", factor=factor, original_max_position=64)
    plain = RopeScaling("yarn", factor=factor, original_max_position=64, attention_factor=1.0)

    def scaled(o):
        y = o[0].copy()
        y[..., :r] *= m
        return y

    check.check_same(target, "yarn_temperature", STEM,
                     Case(case.arrays, dict(case.params, scaling=default)),
                     Case(case.arrays, dict(case.params, scaling=plain)), view_b=scaled)
