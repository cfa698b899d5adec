"""MoE balancing losses: Switch/GShard auxiliary loss (Fedus et al., 2021, eq. 4-6),
DeepSeek-V3's sequence-wise balance loss (arXiv:2412.19437, eq. 17-20), router z-loss (ST-MoE,
Zoph et al., 2022, eq. 5)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, is_integer_array, require, shape_of

KINDS = ("switch", "seq", "z")
# Guard of the per-token normalization of "seq" (sigmoid scores may all round to 0).
NORM_EPS = 1e-20


def moe_balance_loss(scores, topk_ids, *, kind: str, n_seq: int = 1, alpha: float = 1.0):
    """A scalar balancing loss over N routed tokens; returns ``loss``.

    Shapes: ``scores`` (N, E) float (the router's scores; for ``kind="z"`` the router
    *logits*); ``topk_ids`` (N, k) integer, the experts each token was sent to (the selection
    of moe_router, bias included); ignored for "z", where it may be None. Output: a 0-d float
    in float32 or wider (float64 in the reference). N may be 0: the loss is then 0.

    Math (``count_i`` = number of (token, slot) assignments to expert i)::

        "switch":  f_i = count_i / (N k)          fraction of assignments to expert i
                   P_i = (1/N) sum_t s_ti         mean score of expert i
                   loss = alpha * E * sum_i f_i P_i
        "seq":     the N tokens are n_seq sequences of T = N / n_seq consecutive tokens; for
                   each sequence b:
                   f_i = E / (k T) * count_i(b)
                   s'_ti = s_ti / (sum_j s_tj + 1e-20)    (scores normalized over all E)
                   P_i = (1/T) sum_{t in b} s'_ti
                   L_b = alpha * sum_i f_i P_i
                   loss = (1/n_seq) sum_b L_b
        "z":       loss = alpha * (1/N) sum_t (logsumexp_i x_ti)**2       (x = logits)

    Uniform routing (every expert gets N k / E assignments, every score 1/E) gives
    ``alpha`` for "switch" and "seq". Conventions: "switch" counts every one of the k slots
    and divides by N k (Megatron-Core's ``switch_load_balancing_loss_func``); HF
    transformers' ``load_balancing_loss_func`` (Mixtral, Qwen-MoE) divides the counts by N
    only, so its value is k times this one (alpha=1). The Switch paper (k = 1) and GShard
    (which counts only the top-1 slot) agree with this one at k = 1. "seq" is DeepSeek-V3's
    L_Bal with N_r = E, K_r = k, alpha its balance factor; it is not in HF transformers.
    "z" is ST-MoE's router z-loss (its coefficient 1e-3 is ``alpha``).

    Gradients: with respect to ``scores`` (the counts are constants)::

        "switch":  d s_ti = alpha E f_i / N
        "seq":     d s_ti = alpha / (n_seq T) * (f_i - sum_j f_j s'_tj) / (sum_j s_tj + 1e-20)
        "z":       d x_ti = 2 alpha lse_t softmax(x_t)_i / N

    Rejected: an unknown ``kind``; ``scores`` not (N, E) with E >= 1; ``topk_ids`` not an
    integer (N, k) array with k >= 1 (TypeError / ValueError; None allowed for "z"); ids
    outside [0, E) (IndexError naming ``topk_ids``); ``n_seq`` < 1 or not dividing N;
    ``alpha < 0``.
    """
    check_args(scores, topk_ids, kind=kind, n_seq=n_seq, alpha=alpha)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(scores, topk_ids, *, kind: str, n_seq: int = 1, alpha: float = 1.0) -> None:
    ss = shape_of(scores)
    require(kind in KINDS, ValueError, f"kind: expected one of {KINDS}, got {kind!r}")
    require(len(ss) == 2 and ss[1] >= 1, ValueError,
            f"scores: expected shape (N, E) with E >= 1, got {ss}")
    if topk_ids is not None or kind != "z":
        require(topk_ids is not None, ValueError, f"topk_ids: required for kind {kind!r}")
        ts = shape_of(topk_ids)
        require(len(ts) == 2 and ts[0] == ss[0] and ts[1] >= 1, ValueError,
                f"topk_ids: expected shape ({ss[0]}, k) with k >= 1, got {ts}")
        require(is_integer_array(topk_ids), TypeError, "topk_ids: expected an integer array")
    require(isinstance(n_seq, int) and n_seq >= 1 and ss[0] % n_seq == 0, ValueError,
            f"n_seq: expected a divisor of the number of tokens {ss[0]}, got {n_seq}")
    require(alpha >= 0, ValueError, f"alpha: expected >= 0, got {alpha}")


def check_ids(ids_np: np.ndarray, n_experts: int) -> None:
    """Value check on host ids, shared with moe_bias_update so every backend rejects alike."""
    if ids_np.size:
        lo, hi = int(ids_np.min()), int(ids_np.max())
        require(lo >= 0 and hi < n_experts, IndexError,
                f"topk_ids: expected values in [0, {n_experts}), got values in [{lo}, {hi}]")


@st.composite
def routed_ids(draw, n: int, e: int, k: int) -> np.ndarray:
    """(n, k) int64: k distinct experts per token, uniform, skewed or all on the same few."""
    rng = np.random.default_rng(draw(S.seeds()))
    skew = draw(st.sampled_from((0.0, 1.0, 4.0)))
    w = np.exp(-skew * np.arange(e) / max(e, 1))
    rows = [rng.choice(e, size=k, replace=False, p=w / w.sum()) for _ in range(n)]
    return np.asarray(rows, np.int64).reshape(n, k)


@st.composite
def _cases(draw) -> Case:
    # richer choices first: hypothesis starts from the first of each, so a small budget still
    # meets k > 1, several sequences and non-trivial N
    kind = draw(st.sampled_from(KINDS))
    n_seq = draw(st.sampled_from((2, 1, 3)))
    n = n_seq * draw(st.sampled_from((3, 1, 0, 5)))
    e = draw(st.sampled_from((8, 3, 2, 1)))
    k = min(e, draw(st.sampled_from((2, 1, 3))))
    if kind == "z":
        scores = draw(S.float_arrays((n, e), scales=(0.1, 1.0, 4.0, 30.0)))
    else:  # scores as routers make them: softmax or sigmoid values
        x = draw(S.float_arrays((n, e), scales=(0.1, 1.0, 4.0)))
        if draw(st.booleans()):
            scores = 1.0 / (1.0 + np.exp(-x))
        else:
            ex = np.exp(x - x.max(axis=-1, keepdims=True, initial=-np.inf))
            scores = ex / ex.sum(axis=-1, keepdims=True)
    ids = draw(routed_ids(n, e, k))
    if kind == "z" and draw(st.booleans()):
        ids = None
    return Case({"scores": scores, "topk_ids": ids},
                {"kind": kind, "n_seq": n_seq, "alpha": draw(st.sampled_from((1.0, 1e-3, 0.3)))})


def _bad(kind="switch", ids=((0, 1), (1, 2), (2, 3)), n_seq=1, alpha=1.0):
    def build():
        return ({"scores": np.full((3, 4), 0.25),
                 "topk_ids": None if ids is None else np.asarray(ids, np.int64)},
                {"kind": kind, "n_seq": n_seq, "alpha": alpha})
    return build


COMPONENT = Component(
    stem="moe_balance_loss",
    coverage={"kind": ("seq", "switch", "z")},
    inputs=("scores", "topk_ids"),
    outputs=("loss",),
    differentiable=("scores",),
    integer_inputs=("topk_ids",),
    wide_outputs=("loss",),
    cases=_cases,
    errors=(
        ErrorCase("unknown kind", _bad(kind="gshard"), ValueError, r"kind"),
        ErrorCase("expert id equal to E", _bad(ids=((0, 4), (1, 2), (2, 3))), IndexError,
                  r"topk_ids"),
        ErrorCase("n_seq not dividing N", _bad(kind="seq", n_seq=2), ValueError, r"n_seq"),
        ErrorCase("switch without ids", _bad(ids=None), ValueError, r"topk_ids"),
        ErrorCase("negative alpha", _bad(alpha=-1.0), ValueError, r"alpha"),
    ),
    summary="MoE balance losses: Switch aux (E sum f P), DeepSeek-V3 sequence-wise, z-loss",
)
