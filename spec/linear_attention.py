"""Causal linear (kernelized) attention with per-head decay: parallel, recurrent, chunked forms.

Katharopoulos et al. 2020 ("Transformers are RNNs": feature maps, the recurrent form);
RetNet (Sun et al. 2023: per-head exponential decay, the parallel / recurrent / chunkwise
forms); the chunked algorithm of GLA (Yang et al. 2024) and flash-linear-attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, is_integer_array, require, shape_of

FEATURE_MAPS = ("identity", "elu1", "relu")
FORMS = ("parallel", "recurrent", "chunked")


def linear_attention(q, k, v, log_decay=None, initial_state=None, *,
                     feature_map: str = "identity", form: str = "parallel",
                     chunk_size: int = 16, scale: float | None = None):
    """Causal linear attention with a decaying state; returns ``(out, final_state)``.

    Shapes: ``q``, ``k`` (B, T, H, Dk); ``v`` (B, T, H, Dv); ``log_decay`` (H,) with every
    value finite and <= 0, or None (no decay: gamma = 1); ``initial_state`` (B, H, Dk, Dv) or
    None (zeros), in the dtype of q or float32 (a decode loop carries the state in float32).
    Outputs: ``out`` (B, T, H, Dv) in the dtype of q; ``final_state`` (B, H, Dk, Dv) in
    float32 or wider (float64 in the reference), like sdpa's lse: it is an accumulator that is
    carried across calls.

    Feature map phi, applied elementwise to q and k: ``"identity"`` (RetNet, Lightning),
    ``"elu1"`` = elu(x) + 1 (x + 1 for x > 0, exp(x) otherwise; Katharopoulos et al. 2020),
    ``"relu"`` = max(x, 0). Derivatives at 0: elu1'(0) = 1, relu'(0) = 0 (torch and JAX).
    ``scale`` defaults to 1 (linear attention has no softmax temperature to keep in range; a
    model that wants Dk ** -0.5 passes it).

    Math, per batch b and head h, with gamma = exp(log_decay_h), rows phi(q_t), phi(k_t) of
    length Dk and v_t of length Dv, S_{-1} = initial_state (Dk, Dv)::

        S_t = gamma S_{t-1} + phi(k_t)^T v_t          o_t = scale phi(q_t) S_t

    ``final_state = S_{T-1}`` (the initial state itself when T = 0). The decay multiplies the
    state once per token, so the term of token s in S_t carries gamma^(t - s) (exponent 0 for
    s = t) and the initial state gamma^(t + 1).

    Forms (``form``), equal in exact arithmetic, different in cost and rounding:
    ``"parallel"``: ``O = scale ((phi(Q) phi(K)^T) * D) V + scale diag(gamma^(t+1)) phi(Q) S0``
    with the causal decay mask ``D_ts = gamma^(t - s)`` for s <= t and 0 for s > t; the final
    state is ``sum_s gamma^(T-1-s) phi(k_s)^T v_s + gamma^T S0``. ``"recurrent"``: the scan
    above, one token at a time. ``"chunked"``: tokens in consecutive chunks of ``chunk_size``
    C (the last one may be shorter): within a chunk the parallel form, across chunks the state
    (decayed by gamma^(i+1) for the chunk's i-th row, and advanced by gamma^len per chunk).
    ``chunk_size`` is read only by the chunked form; any C >= 1 gives the same result.

    Properties: the three forms agree; the chunked form agrees for every chunk size; out at t
    does not depend on tokens after t; running tokens [0, m) and then [m, T) with the first
    call's final_state as the second's initial_state equals one pass (decode with a state).

    Gradients: with respect to q, k, v and initial_state, through both outputs. Not with
    respect to log_decay: it is a fixed per-head constant in RetNet and Lightning; models that
    learn a decay (GLA, Mamba-2) use data-dependent gates, a different component.

    Rejected (ValueError naming the argument): wrong ranks, mismatched B, T, H or Dk,
    log_decay not (H,), initial_state not (B, H, Dk, Dv), unknown feature_map or form,
    chunk_size < 1, scale <= 0, integer q, k, v (TypeError); log_decay with a value > 0 or
    not finite (ValueError, a value check: ``check_decay``).
    """
    check_args(q, k, v, log_decay, initial_state, feature_map=feature_map, form=form,
               chunk_size=chunk_size, scale=scale)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


@dataclass(frozen=True)
class HybridPattern:
    """Which layers of a hybrid model use softmax attention and which a linear form.

    ``linear_per_softmax`` linear layers precede each softmax layer, repeating from layer 0:
    MiniMax-01 uses 7 lightning layers then 1 softmax layer (``linear_per_softmax=7``); a
    Jamba-style 1:7 attention:Mamba block is the same pattern with Mamba for "linear".
    ``softmax_first`` puts the softmax layer at the start of each group instead. 0 means all
    softmax (a plain transformer).
    """

    n_layers: int
    linear_per_softmax: int = 7
    softmax_first: bool = False

    def __post_init__(self) -> None:
        require(self.n_layers >= 0, ValueError, f"n_layers: expected >= 0, got {self.n_layers}")
        require(self.linear_per_softmax >= 0, ValueError,
                f"linear_per_softmax: expected >= 0, got {self.linear_per_softmax}")

    def layers(self) -> tuple[str, ...]:
        """The kind of each layer, ``"linear"`` or ``"softmax"``, in order."""
        group = self.linear_per_softmax + 1
        pos = group - 1 if not self.softmax_first else 0
        return tuple("softmax" if i % group == pos else "linear" for i in range(self.n_layers))


def check_args(q, k, v, log_decay=None, initial_state=None, *, feature_map: str = "identity",
               form: str = "parallel", chunk_size: int = 16,
               scale: float | None = None) -> None:
    check_shapes(q, k, v, log_decay, initial_state)
    require(feature_map in FEATURE_MAPS, ValueError,
            f"feature_map: expected one of {FEATURE_MAPS}, got {feature_map!r}")
    require(form in FORMS, ValueError, f"form: expected one of {FORMS}, got {form!r}")
    require(int(chunk_size) == chunk_size and chunk_size >= 1, ValueError,
            f"chunk_size: expected an integer >= 1, got {chunk_size}")
    require(scale is None or scale > 0, ValueError, f"scale: expected > 0, got {scale}")


def check_shapes(q, k, v, log_decay=None, initial_state=None) -> None:
    """The array checks shared with lightning_attention."""
    qs, ks, vs = shape_of(q), shape_of(k), shape_of(v)
    require(len(qs) == 4, ValueError, f"q: expected shape (B, T, H, Dk), got {qs}")
    require(ks == qs, ValueError, f"k: expected the shape {qs} of q, got {ks}")
    require(len(vs) == 4 and vs[:3] == qs[:3], ValueError,
            f"v: expected shape {qs[:3] + ('Dv',)} (B, T, H, Dv), got {vs}")
    for name, a in (("q", q), ("k", k), ("v", v)):
        require(not is_integer_array(a), TypeError, f"{name}: expected a floating array")
    b, _, h, dk = qs
    if log_decay is not None:
        require(shape_of(log_decay) == (h,), ValueError,
                f"log_decay: expected shape ({h},) (H,), got {shape_of(log_decay)}")
    if initial_state is not None:
        want = (b, h, dk, vs[3])
        require(shape_of(initial_state) == want, ValueError,
                f"initial_state: expected shape {want} (B, H, Dk, Dv), got "
                f"{shape_of(initial_state)}")


def check_decay(decay_max: float, all_finite: bool) -> None:
    """Value check, separate so that backends can compute the max their own way."""
    require(all_finite and decay_max <= 0, ValueError,
            f"log_decay: expected finite values <= 0, got a maximum of {decay_max}")


@st.composite
def log_decays(draw, h: int) -> np.ndarray | None:
    """None, zeros, or per-head values in [-3, 0] (RetNet: 1 - 2^(-5 - i) is -0.03 .. -0.0001;
    larger decays make the early tokens vanish within a chunk)."""
    kind = draw(st.sampled_from(("none", "zero", "retnet", "uniform")))
    if kind == "none":
        return None
    if kind == "zero":
        return np.zeros(h)
    if kind == "retnet":
        return np.log1p(-(2.0 ** (-5.0 - np.arange(h, dtype=np.float64))))
    return -np.random.default_rng(draw(S.seeds())).uniform(0.0, 3.0, h)


@st.composite
def linear_cases(draw, lightning: bool = False) -> Case:
    b, t = draw(S.sizes((0, 1, 2))), draw(S.sizes((0, 1, 2, 5, 8, 13, 16)))
    h = draw(S.nonempty((1, 2, 3)))
    dk, dv = draw(st.sampled_from((1, 4, 8, 16))), draw(st.sampled_from((1, 3, 8)))
    scales = (0.1, 0.5, 1.0, 2.0)
    arrays = {
        "q": draw(S.float_arrays((b, t, h, dk), scales=scales)),
        "k": draw(S.float_arrays((b, t, h, dk), scales=scales)),
        "v": draw(S.float_arrays((b, t, h, dv), scales=scales)),
        "log_decay": draw(log_decays(h)),
        "initial_state": (draw(S.float_arrays((b, h, dk, dv), scales=scales))
                          if draw(st.booleans()) else None),
    }
    blocks = st.sampled_from((1, 2, 3, 4, 16))
    params = {"scale": draw(st.sampled_from((None, None, 0.5)))}
    if lightning:
        params["block_size"] = draw(blocks)
    else:
        params.update(feature_map=draw(st.sampled_from(FEATURE_MAPS)),
                      form=draw(st.sampled_from(FORMS)), chunk_size=draw(blocks))
    return Case(arrays, params)


def bad(shapes=None, log_decay=None, **params):
    """An error case builder shared with lightning_attention."""
    shapes = {"q": (1, 3, 2, 4), "k": (1, 3, 2, 4), "v": (1, 3, 2, 5), **(shapes or {})}

    def build():
        arrays = {n: np.ones(s) for n, s in shapes.items()}
        arrays.setdefault("initial_state", None)
        arrays["log_decay"] = log_decay
        return arrays, params
    return build


COMPONENT = Component(
    stem="linear_attention",
    coverage={"form": ("chunked", "parallel", "recurrent"),
              "feature_map": ("elu1", "identity", "relu"), "log_decay": ("given", "absent"),
              "initial_state": ("given", "absent")},
    inputs=("q", "k", "v", "log_decay", "initial_state"),
    outputs=("out", "final_state"),
    differentiable=("q", "k", "v", "initial_state"),
    wide_outputs=("final_state",),
    cases=linear_cases,
    errors=(
        ErrorCase("k of another shape", bad({"k": (1, 3, 2, 3)}), ValueError, r"k:"),
        ErrorCase("log_decay not (H,)", bad(log_decay=np.zeros(3)), ValueError, r"log_decay"),
        ErrorCase("positive log_decay", bad(log_decay=np.array([-0.5, 0.25])), ValueError,
                  r"log_decay"),
        ErrorCase("initial_state of the wrong shape", bad({"initial_state": (1, 2, 5, 4)}),
                  ValueError, r"initial_state"),
        ErrorCase("unknown feature map", bad(feature_map="softmax"), ValueError,
                  r"feature_map"),
        ErrorCase("unknown form", bad(form="fused"), ValueError, r"form"),
        ErrorCase("chunk_size 0", bad(form="chunked", chunk_size=0), ValueError, r"chunk_size"),
    ),
    summary="Linear attention: identity/elu+1/relu maps, decay, state; parallel/recurrent/chunked",
)
