"""Scaled dot-product attention (Vaswani et al., 2017) with the masks of modern decoders.

MHA, MQA and GQA by the number of KV heads; causal with a query offset; sliding window;
segment ids for packed documents; logit softcap (Gemma 2); output plus log-sum-exp.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, is_integer_array, require, shape_of


def sdpa(q, k, v, segment_ids_q=None, segment_ids_kv=None, *, causal: bool = False,
         window: int | None = None, softcap: float | None = None, scale: float | None = None):
    """Attention of every query over the visible keys; returns ``(out, lse)``.

    Shapes (the B, T, H, D layout of FlashAttention and jax.nn.dot_product_attention):
    ``q`` (B, Tq, Hq, D), ``k`` (B, Tk, Hkv, D), ``v`` (B, Tk, Hkv, Dv); ``segment_ids_q``
    (B, Tq) and ``segment_ids_kv`` (B, Tk) integer, both or neither. Outputs: ``out``
    (B, Tq, Hq, Dv) in the dtype of q; ``lse`` (B, Tq, Hq) in float32 or wider (float64 in the
    reference).

    Head mapping (GQA): Hq must be a multiple of Hkv; query head h reads KV head
    ``h // (Hq // Hkv)`` (contiguous groups, as HF's ``repeat_kv``). Hkv == Hq is MHA,
    Hkv == 1 is MQA.

    Scores: ``s = scale * q . k`` with ``scale`` default ``1 / sqrt(D)``; with ``softcap`` c,
    ``s = c * tanh(s / c)`` (applied before masking).

    Visibility of key j to query i: queries are the *last* Tq of Tk positions, so query i sits
    at position ``p_i = i + Tk - Tq`` (bottom-right alignment; p_i may be negative when
    Tq > Tk). ``causal``: ``j <= p_i``. ``window`` W (needs ``causal``): also ``j > p_i - W``,
    i.e. at most W keys including the query's own position. Segment ids: also
    ``segment_ids_q[b, i] == segment_ids_kv[b, j]``.

    ``lse_i = log(sum_{j visible} exp(s_ij))``; ``out_i = sum_j exp(s_ij - lse_i) v_j``.
    A query with no visible key has ``out_i = 0`` and ``lse_i = -inf`` (never NaN), and
    receives zero gradient.

    Gradients: with respect to q, k and v, through both outputs (a cotangent on ``lse`` is
    allowed; on a fully masked row it is ignored).

    Rejected (ValueError naming the argument): wrong ranks, batch/length/dim mismatches,
    Hq not a multiple of Hkv, only one of the segment ids, non-integer segment ids
    (TypeError), ``window`` without ``causal`` or < 1, ``softcap <= 0``, ``scale <= 0``.
    """
    check_args(q, k, v, segment_ids_q, segment_ids_kv, causal=causal, window=window,
               softcap=softcap, scale=scale)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(q, k, v, segment_ids_q=None, segment_ids_kv=None, *, causal: bool = False,
               window: int | None = None, softcap: float | None = None,
               scale: float | None = None) -> None:
    qs, ks, vs = shape_of(q), shape_of(k), shape_of(v)
    require(len(qs) == 4, ValueError, f"q: expected shape (B, Tq, Hq, D), got {qs}")
    require(len(ks) == 4, ValueError, f"k: expected shape (B, Tk, Hkv, D), got {ks}")
    require(len(vs) == 4, ValueError, f"v: expected shape (B, Tk, Hkv, Dv), got {vs}")
    require(ks[0] == qs[0] and ks[3] == qs[3], ValueError,
            f"k: expected batch {qs[0]} and head dim {qs[3]} of q, got shape {ks}")
    require(vs[:3] == ks[:3], ValueError, f"v: expected leading dims {ks[:3]} of k, got {vs}")
    require(ks[2] >= 1 and qs[2] % ks[2] == 0, ValueError,
            f"k: number of KV heads {ks[2]} must divide the number of query heads {qs[2]}")
    require((segment_ids_q is None) == (segment_ids_kv is None), ValueError,
            "segment_ids_q: segment_ids_q and segment_ids_kv must be given together")
    if segment_ids_q is not None:
        for name, ids, want in (("segment_ids_q", segment_ids_q, qs[:2]),
                                ("segment_ids_kv", segment_ids_kv, ks[:2])):
            require(shape_of(ids) == want, ValueError,
                    f"{name}: expected shape {want}, got {shape_of(ids)}")
            require(is_integer_array(ids), TypeError, f"{name}: expected an integer array")
    if window is not None:
        require(causal, ValueError, "window: a sliding window needs causal=True")
        require(window >= 1, ValueError, f"window: expected >= 1, got {window}")
    require(softcap is None or softcap > 0, ValueError, f"softcap: expected > 0, got {softcap}")
    require(scale is None or scale > 0, ValueError, f"scale: expected > 0, got {scale}")


@st.composite
def attention_cases(draw, allow_segments: bool = True) -> Case:
    b = draw(S.sizes((1, 2), min_size=1))
    tk = draw(S.sizes((0, 1, 2, 5, 8, 13)))
    tq = draw(st.sampled_from(tuple({tk, 1, min(tk, 3), tk + 2})))
    hkv = draw(st.sampled_from((1, 2, 3)))
    hq = hkv * draw(st.sampled_from((1, 2, 3)))
    d = draw(st.sampled_from((1, 4, 8, 16)))
    dv = draw(st.sampled_from((d, 3)))
    causal = draw(st.booleans())
    scales = (0.1, 1.0, 3.0)
    arrays = {
        "q": draw(S.float_arrays((b, tq, hq, d), scales=scales)),
        "k": draw(S.float_arrays((b, tk, hkv, d), scales=scales)),
        "v": draw(S.float_arrays((b, tk, hkv, dv), scales=scales)),
        "segment_ids_q": None, "segment_ids_kv": None,
    }
    if allow_segments and draw(st.booleans()):
        n_seg = draw(st.sampled_from((1, 2, 3)))
        arrays["segment_ids_q"] = np.sort(draw(S.int_arrays((b, tq), 0, n_seg)), axis=1)
        arrays["segment_ids_kv"] = np.sort(draw(S.int_arrays((b, tk), 0, n_seg)), axis=1)
    params = {
        "causal": causal,
        "window": draw(st.sampled_from((None, 1, 2, 5))) if causal else None,
        "softcap": draw(st.sampled_from((None, None, 5.0))),
        "scale": draw(st.sampled_from((None, None, 0.5))),
    }
    return Case(arrays, params)


def _qkv(hq=2, hkv=1, **params):
    def build():
        return {"q": np.ones((1, 3, hq, 4)), "k": np.ones((1, 3, hkv, 4)),
                "v": np.ones((1, 3, hkv, 4)), "segment_ids_q": None,
                "segment_ids_kv": None}, params
    return build


def _one_segment():
    arrays, params = _qkv()()
    arrays["segment_ids_q"] = np.zeros((1, 3), np.int64)
    return arrays, params


def _features(case: Case) -> dict[str, str]:
    """The head grouping (GQA maps query head h to kv head h // (Hq / Hkv)), a sliding window,
    and queries aligned to the end of the keys (fewer queries than keys: a decode)."""
    hq, hkv = case.arrays["q"].shape[2], case.arrays["k"].shape[2]
    tq, tk = case.arrays["q"].shape[1], case.arrays["k"].shape[1]
    return {"heads": "MHA" if hq == hkv else "MQA" if hkv == 1 else "GQA",
            "sliding": "no" if case.params["window"] is None else "yes",
            "queries": "fewer" if tq < tk else "as many as keys" if tq == tk else "more"}


COMPONENT = Component(
    stem="sdpa",
    features=_features,
    coverage={"heads": ("MHA", "MQA", "GQA"), "causal": ("True", "False"), "sliding": ("yes", "no"),
              "softcap": ("None", "5.0"), "scale": ("None", "0.5"),
              "segment_ids_q": ("given", "absent"), "queries": ("as many as keys", "fewer")},
    inputs=("q", "k", "v", "segment_ids_q", "segment_ids_kv"),
    outputs=("out", "lse"),
    differentiable=("q", "k", "v"),
    integer_inputs=("segment_ids_q", "segment_ids_kv"),
    neg_inf_outputs=("lse",),
    wide_outputs=("lse",),
    cases=attention_cases,
    errors=(
        ErrorCase("Hq not a multiple of Hkv", _qkv(hq=3, hkv=2), ValueError, r"heads"),
        ErrorCase("window without causal", _qkv(window=2), ValueError, r"window"),
        ErrorCase("only one segment id array", _one_segment, ValueError, r"segment_ids"),
        ErrorCase("non-positive softcap", _qkv(softcap=0.0), ValueError, r"softcap"),
    ),
    summary="SDPA: GQA/MQA; causal with offset; window; segments; softcap; (out, lse)",
)
