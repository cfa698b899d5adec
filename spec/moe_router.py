"""MoE routers: softmax top-k (Mixtral, Qwen-MoE) and DeepSeek-V3's sigmoid, bias-corrected,
group-limited top-k (DeepSeek-V3 technical report, arXiv:2412.19437, section 2.1.2)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, is_integer_array, require, shape_of

SCORE_FUNCS = ("softmax", "sigmoid")
MASKED_GROUP_FILLS = ("zero", "-inf")
# Added to the denominator of the renormalization, as HF's DeepSeek-V3 and Mistral4 routers do.
NORM_EPS = 1e-20


def moe_router(logits, bias=None, *, top_k: int, score_func: str = "softmax",
               norm_topk_prob: bool = False, n_group: int = 1, topk_group: int = 1,
               routed_scaling_factor: float = 1.0, masked_group_fill: str = "zero"):
    """Route each token to ``top_k`` experts; returns ``(topk_ids, topk_weights, scores)``.

    Shapes: ``logits`` (N, E) float, the router matmul ``x @ W_router^T`` (kept outside: the
    router is everything after it); ``bias`` (E,) float or None (DeepSeek-V3's
    ``e_score_correction_bias``). Outputs: ``topk_ids`` (N, k) integer (int64; int32 where a
    framework's default integer is 32-bit, as JAX without x64), ``topk_weights`` (N, k) and
    ``scores`` (N, E), both in the dtype of ``logits``. Scores, selection and weights are
    computed in float32 or wider for lower-precision logits (as HF does) and rounded once.

    Math, per token (row) with E experts and k = ``top_k``::

        s = softmax(logits)            score_func "softmax" (Mixtral, Qwen2/3-MoE, Mistral4)
        s = sigmoid(logits)            score_func "sigmoid" (DeepSeek-V3)
        u = s + bias                   selection scores (bias None: u = s); bias never
                                       enters the weights
        groups (n_group > 1): the E experts form n_group contiguous groups of E / n_group
            (expert e is in group e // (E / n_group)); group score = sum of the two largest
            u in the group; the topk_group groups with the largest group scores are kept and
            u of every other expert is replaced by the fill:
              masked_group_fill "zero": 0.0  (DeepSeek-V3's modeling code on the HF hub,
                  ``masked_fill(~score_mask.bool(), 0.0)``; HF Mistral4; DeepSeek-V2's
                  group_limited_greedy)
              masked_group_fill "-inf": -inf (DeepSeek's own inference code, model.py
                  ``Gate``; transformers 5.x's DeepSeek-V3, GLM-4-MoE, dots1)
        topk_ids   = the k experts of largest u, in descending order of u
        w_j        = s[topk_ids_j]                    (unbiased scores)
        w_j        = w_j / (sum_j w_j + 1e-20)        if norm_topk_prob
        topk_weights = routed_scaling_factor * w

    DeepSeek's model.py ``Gate`` differs in two more places: without a bias its group score
    is the group's max (DeepSeek-V2), and it renormalizes sigmoid weights with no 1e-20; the
    spec always uses the top-2 sum (as HF) and the guarded denominator.

    Mixtral's router always renormalizes (norm_topk_prob=True); the Mixtral paper's
    "softmax over the top-k logits" is the same thing (softmax then renormalized top-k equals
    the softmax of the top-k logits). Qwen2/3-MoE exposes ``norm_topk_prob``. The 1e-20 is
    HF's DeepSeek-V3/Mistral4 guard; for softmax scores it changes nothing representable
    (the top-1 score is at least 1/E), for sigmoid scores it turns 0/0 into 0.

    The fill matters: with "zero", a masked expert (u = 0) outranks a kept expert whose
    corrected score u = s + bias is negative (a negative bias), so the token can go to an
    expert outside the kept groups; with "-inf" it never does. Group-limited routing uses at
    most ``topk_group`` groups with "-inf" always, and with "zero" whenever the k-th selected
    u is positive.

    Order and ties: the slots are in descending order of u; equal u (at both levels, experts
    and groups) break by the lowest index first, as ``jax.lax.top_k`` documents and a stable
    descending sort gives (``torch.topk`` documents no tie order, and HF's DeepSeek-V3 uses
    ``sorted=False``: compare with it as sets). Conformance compares ids exactly, except on a
    numerical knife edge: where two selection scores (or two group scores) differ by less
    than the backend dtype's rounding of them, either order is accepted there only; experts
    with identical inputs (same logit and bias, or both masked) are exact ties and must
    follow the lowest-index rule.

    Domain: ``n_group`` divides E; with ``n_group > 1`` each group has at least 2 experts
    (the top-2 group score) and ``1 <= topk_group <= n_group``; ``n_group == 1`` needs
    ``topk_group == 1`` (no group stage); ``1 <= top_k <= topk_group * E / n_group`` (never
    more experts than the kept groups hold: beyond that the choice among filled entries is
    arbitrary). N may be 0.

    Gradients: with respect to ``logits`` through ``topk_weights`` and ``scores`` (the ids
    are piecewise constant; their cotangent is ignored and may be None). ``bias`` gets none.
    With g = d(scores) + the scatter of d(weights) through the normalization,
    ``dlogits = s * (g - sum(g * s))`` (softmax) or ``g * s * (1 - s)`` (sigmoid).

    Rejected (ValueError naming the argument): logits not 2-D or with E = 0, bias not of
    shape (E,), top_k outside the domain, an unknown score_func or masked_group_fill,
    n_group not dividing E or leaving groups of one expert, topk_group outside its range,
    routed_scaling_factor <= 0.
    """
    check_args(logits, bias, top_k=top_k, score_func=score_func, norm_topk_prob=norm_topk_prob,
               n_group=n_group, topk_group=topk_group,
               routed_scaling_factor=routed_scaling_factor, masked_group_fill=masked_group_fill)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(logits, bias=None, *, top_k: int, score_func: str = "softmax",
               norm_topk_prob: bool = False, n_group: int = 1, topk_group: int = 1,
               routed_scaling_factor: float = 1.0, masked_group_fill: str = "zero") -> None:
    ls = shape_of(logits)
    require(len(ls) == 2 and ls[1] >= 1, ValueError,
            f"logits: expected shape (N, E) with E >= 1, got {ls}")
    require(not is_integer_array(logits), TypeError, "logits: expected a float array")
    e = ls[1]
    if bias is not None:
        require(shape_of(bias) == (e,), ValueError,
                f"bias: expected shape ({e},), got {shape_of(bias)}")
    require(score_func in SCORE_FUNCS, ValueError,
            f"score_func: expected one of {SCORE_FUNCS}, got {score_func!r}")
    require(masked_group_fill in MASKED_GROUP_FILLS, ValueError,
            f"masked_group_fill: expected one of {MASKED_GROUP_FILLS}, got {masked_group_fill!r}")
    require(isinstance(n_group, int) and n_group >= 1 and e % n_group == 0, ValueError,
            f"n_group: expected a divisor of the number of experts {e}, got {n_group}")
    if n_group > 1:
        require(e // n_group >= 2, ValueError,
                f"n_group: groups need at least 2 experts (top-2 group score), got "
                f"{e} experts in {n_group} groups")
        require(1 <= topk_group <= n_group, ValueError,
                f"topk_group: expected 1 <= topk_group <= n_group={n_group}, got {topk_group}")
    else:
        require(topk_group == 1, ValueError,
                f"topk_group: expected 1 without groups (n_group=1), got {topk_group}")
    room = topk_group * (e // n_group)
    require(isinstance(top_k, int) and 1 <= top_k <= room, ValueError,
            f"top_k: expected 1 <= top_k <= {room} (experts in the kept groups), got {top_k}")
    require(routed_scaling_factor > 0, ValueError,
            f"routed_scaling_factor: expected > 0, got {routed_scaling_factor}")


@st.composite
def router_params(draw, e: int) -> dict:
    """Static parameters valid for E = e experts, groups included when e allows them."""
    divisors = [g for g in range(2, e + 1) if e % g == 0 and e // g >= 2]
    n_group, topk_group = 1, 1
    if divisors and not draw(st.booleans()):  # groups first
        n_group = draw(st.sampled_from(divisors))
        topk_group = draw(st.integers(1, n_group))
    room = topk_group * (e // n_group)
    return {
        "top_k": min(room, draw(st.sampled_from((2, 1, 3, room)))),
        "score_func": draw(st.sampled_from(SCORE_FUNCS)),
        "norm_topk_prob": draw(st.booleans()),
        "n_group": n_group,
        "topk_group": topk_group,
        "routed_scaling_factor": draw(st.sampled_from((1.0, 2.5))),
        "masked_group_fill": draw(st.sampled_from(MASKED_GROUP_FILLS)),
    }


@st.composite
def router_cases(draw) -> Case:
    # richer choices first: hypothesis starts from the first of each
    n = draw(st.sampled_from((5, 1, 2, 0, 3, 8)))
    e = draw(st.sampled_from((8, 4, 6, 3, 2, 1)))
    logits = draw(S.float_arrays((n, e), scales=(0.1, 1.0, 4.0, 30.0)))
    bias = None
    if draw(st.booleans()):
        bias = draw(S.float_arrays((e,), styles=("normal", "ties"), scales=(0.01, 0.1, 1.0)))
    return Case({"logits": logits, "bias": bias}, draw(router_params(e)))


def _bad(n=3, e=4, bias=None, **params):
    def build():
        return {"logits": np.ones((n, e)), "bias": bias}, {"top_k": 2, **params}
    return build


def _features(case: Case) -> dict[str, str]:
    """Group-limited routing (several groups, some masked) or not."""
    return {"groups": "several" if case.params.get("n_group", 1) > 1 else "one"}


COMPONENT = Component(
    stem="moe_router",
    features=_features,
    coverage={"score_func": ("sigmoid", "softmax"), "masked_group_fill": ("zero", "-inf"),
              "norm_topk_prob": ("True", "False"), "bias": ("given", "absent"),
              "routed_scaling_factor": ("1.0", "2.5"), "groups": ("one", "several")},
    inputs=("logits", "bias"),
    outputs=("topk_ids", "topk_weights", "scores"),
    differentiable=("logits",),
    cases=router_cases,
    errors=(
        ErrorCase("top_k above E", _bad(top_k=5), ValueError, r"top_k"),
        ErrorCase("bias of the wrong shape", _bad(bias=np.zeros(3)), ValueError, r"bias"),
        ErrorCase("unknown score function", _bad(score_func="relu"), ValueError, r"score_func"),
        ErrorCase("n_group not dividing E", _bad(n_group=3), ValueError, r"n_group"),
        ErrorCase("topk_group above n_group", _bad(n_group=2, topk_group=3), ValueError,
                  r"topk_group"),
        ErrorCase("top_k above the kept groups", _bad(e=8, n_group=4, topk_group=1, top_k=3),
                  ValueError, r"top_k"),
        ErrorCase("unknown masked-group fill", _bad(masked_group_fill="nan"), ValueError,
                  r"masked_group_fill"),
    ),
    summary="MoE router: softmax/sigmoid top-k; bias for selection; group-limited; scaling",
)
