"""DeepSeek-V3's auxiliary-loss-free balancing: the per-expert selection bias update
(Wang et al., 2024, arXiv:2408.15664; DeepSeek-V3, arXiv:2412.19437, section 2.1.2)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, is_integer_array, require, shape_of
from lmspec.spec.moe_balance_loss import routed_ids


def moe_bias_update(bias, topk_ids, *, n_experts: int, gamma: float):
    """One step of the bias update from the step's whole-batch load; returns ``new_bias``.

    Shapes: ``bias`` (E,) float with E = ``n_experts`` (the ``e_score_correction_bias`` that
    moe_router adds to the scores for selection only); ``topk_ids`` (N, k) integer, every
    assignment of the step (all tokens of the whole batch, every slot). Output: ``new_bias``
    (E,) in the dtype of ``bias``.

    Math: ``load_i`` = number of assignments to expert i, ``mean = N k / E``::

        new_bias_i = bias_i + gamma * sign(mean - load_i)

    An overloaded expert's bias decreases by gamma, an underloaded one's increases;
    ``sign(0) = 0``: an expert exactly at the mean load keeps its bias, so a perfectly
    balanced step leaves the bias unchanged (Megatron-Core's ``get_updated_expert_bias``,
    ``torch.sign``). The comparison is exact: ``sign(N k - E load_i)`` in integers. DeepSeek-V3
    uses gamma = 0.001 for most of training and 0.0 at the end. With N = 0 nothing moves.

    Not differentiable (a state transition, not a loss).

    Rejected: ``bias`` not of shape (n_experts,) (ValueError naming ``bias``); ``topk_ids``
    not an integer (N, k) array (TypeError / ValueError); ids outside [0, E) (IndexError naming
    ``topk_ids``); ``n_experts < 1``; ``gamma < 0``.
    """
    check_args(bias, topk_ids, n_experts=n_experts, gamma=gamma)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(bias, topk_ids, *, n_experts: int, gamma: float) -> None:
    require(isinstance(n_experts, int) and n_experts >= 1, ValueError,
            f"n_experts: expected an integer >= 1, got {n_experts!r}")
    require(shape_of(bias) == (n_experts,), ValueError,
            f"bias: expected shape ({n_experts},), got {shape_of(bias)}")
    ts = shape_of(topk_ids)
    require(len(ts) == 2, ValueError, f"topk_ids: expected shape (N, k), got {ts}")
    require(is_integer_array(topk_ids), TypeError, "topk_ids: expected an integer array")
    require(gamma >= 0, ValueError, f"gamma: expected >= 0, got {gamma}")


@st.composite
def _cases(draw) -> Case:
    e = draw(st.sampled_from((4, 8, 3, 2, 1)))  # richer first: hypothesis starts there
    n = draw(st.sampled_from((8, 1, 2, 0, 16)))
    k = min(e, draw(st.sampled_from((2, 1, 3))))
    if draw(st.integers(0, 3)) == 0:  # balanced on purpose: every load equals the mean
        rows = draw(st.integers(1, 2)) * (e // int(np.gcd(k, e)))  # k * rows a multiple of e
        ids = (np.arange(rows)[:, None] * k + np.arange(k)[None, :]) % e  # cyclic, distinct
    else:
        ids = draw(routed_ids(n, e, k))
    bias = draw(S.float_arrays((e,), styles=("normal", "ties", "constant"),
                               scales=(1e-3, 0.1, 1.0)))
    return Case({"bias": bias, "topk_ids": ids},
                {"n_experts": e, "gamma": draw(st.sampled_from((0.0, 1e-3, 0.01, 0.5)))})


def _bad(e=4, bias_len=4, ids=((0, 1), (2, 3)), gamma=1e-3):
    def build():
        return ({"bias": np.zeros(bias_len), "topk_ids": np.asarray(ids, np.int64)},
                {"n_experts": e, "gamma": gamma})
    return build


COMPONENT = Component(
    stem="moe_bias_update",
    inputs=("bias", "topk_ids"),
    outputs=("new_bias",),
    integer_inputs=("topk_ids",),
    cases=_cases,
    errors=(
        ErrorCase("bias of the wrong length", _bad(bias_len=3), ValueError, r"bias"),
        ErrorCase("expert id equal to E", _bad(ids=((0, 4), (2, 3))), IndexError, r"topk_ids"),
        ErrorCase("negative gamma", _bad(gamma=-0.1), ValueError, r"gamma"),
    ),
    summary="MoE aux-loss-free bias update: b += gamma * sign(mean load - load)",
)
