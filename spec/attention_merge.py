"""Merging partial attention outputs by their log-sum-exps (split-KV / flash-decoding).

The combine step of Flash-Decoding (Dao et al., 2023) and of ring / split-KV attention: the
keys are cut into S disjoint splits, attention runs on each, and the partial outputs are merged
by softmax weights taken from their log-sum-exps (the online-softmax rescaling, Milakov &
Gimelshein 2018).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, is_integer_array, require, shape_of


def attention_merge(outs, lses):
    """Merge S partial attention results over disjoint key splits; returns ``(out, lse)``.

    Shapes: ``outs`` (S, B, T, H, D), the partial outputs (softmax-normalised within their
    split, as sdpa returns them); ``lses`` (S, B, T, H), their log-sum-exps, in float32 (as
    sdpa returns them) or in the dtype of ``outs``. S >= 0 (S = 0 merges nothing). Outputs:
    ``out`` (B, T, H, D) in the dtype of outs; ``lse`` (B, T, H) in float32 or wider.

    Math, per (b, t, h): ``lse = log sum_s exp(lse_s)`` (computed with the max subtracted:
    ``m = max_s lse_s``, ``lse = m + log sum_s exp(lse_s - m)``);
    ``out = sum_s exp(lse_s - lse) out_s``. A split in which the query saw no key has
    ``lse_s = -inf`` and weight 0 (its out_s, 0 by sdpa's convention, is ignored whatever it
    holds). When every split has ``lse_s = -inf`` (or S = 0): ``lse = -inf`` and ``out = 0``,
    never NaN.

    Property: for any partition of the keys into splits, merging sdpa over each split equals
    sdpa over all keys (out and lse): the basis of flash-decoding.

    Gradients: with respect to ``outs`` and ``lses``. With ``w_s = exp(lse_s - lse)``:
    ``d outs_s = w_s dout`` and ``d lses_s = w_s (dlse + <dout, out_s - out>)`` (the inner
    product over D). Where ``lse = -inf`` every gradient is 0.

    Rejected (ValueError naming the argument): ``outs`` not 5-D, ``lses`` not 4-D or not the
    leading dims (S, B, T, H) of outs; integer outs or lses (TypeError). ``lses = +inf`` and
    NaN are outside the domain.
    """
    check_args(outs, lses)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(outs, lses) -> None:
    os_, ls = shape_of(outs), shape_of(lses)
    require(len(os_) == 5, ValueError, f"outs: expected shape (S, B, T, H, D), got {os_}")
    require(ls == os_[:4], ValueError, f"lses: expected shape {os_[:4]} (S, B, T, H), got {ls}")
    require(not is_integer_array(outs), TypeError, "outs: expected a floating array")
    require(not is_integer_array(lses), TypeError, "lses: expected a floating array")


@st.composite
def _cases(draw) -> Case:
    s = draw(S.sizes((0, 1, 2, 3, 5)))
    b, t = draw(S.sizes((0, 1, 2))), draw(S.sizes((0, 1, 3, 5)))
    h, d = draw(S.nonempty((1, 2, 3))), draw(S.nonempty((1, 3, 8, 16)))
    outs = draw(S.float_arrays((s, b, t, h, d), scales=(0.1, 1.0, 3.0)))
    # log-sum-exps as attention produces them: log(#keys) + scores of a few units, or large
    lses = draw(S.float_arrays((s, b, t, h), styles=("normal", "uniform", "ties"),
                               scales=(0.5, 3.0, 30.0)))
    rng = np.random.default_rng(draw(S.seeds()))
    dead = rng.uniform(size=lses.shape) < draw(st.sampled_from((0.0, 0.3, 1.0)))
    # a split where the query saw nothing: lse -inf, out 0 (the harness saturates -inf to the
    # dtype's lowest finite value; the conformance property feeds true -inf)
    lses = np.where(dead, -np.inf, lses)
    outs = np.where(dead[..., None], 0.0, outs)
    return Case({"outs": outs, "lses": lses}, {})


def _bad(outs_shape, lses_shape, int_outs=False):
    def build():
        outs = np.ones(outs_shape, np.int64 if int_outs else np.float64)
        return {"outs": outs, "lses": np.zeros(lses_shape)}, {}
    return build


COMPONENT = Component(
    stem="attention_merge",
    inputs=("outs", "lses"),
    outputs=("out", "lse"),
    differentiable=("outs", "lses"),
    neg_inf_outputs=("lse",),
    wide_outputs=("lse",),
    cases=_cases,
    errors=(
        ErrorCase("outs not 5-D", _bad((2, 1, 3, 2), (2, 1, 3)), ValueError, r"outs"),
        ErrorCase("lses of the wrong shape", _bad((2, 1, 3, 2, 4), (2, 1, 3)), ValueError,
                  r"lses"),
        ErrorCase("lses split count differs", _bad((2, 1, 3, 2, 4), (3, 1, 3, 2)), ValueError,
                  r"lses"),
    ),
    summary="Attention merge: combine split-KV partial outputs by their lse (flash-decoding)",
)
