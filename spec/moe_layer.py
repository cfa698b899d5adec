"""Mixture-of-Experts layer (Shazeer et al., 2017; GShard; Switch; DeepSeekMoE; Qwen-MoE):
routed SwiGLU experts chosen by a router, capacity with token dropping, shared experts."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, is_integer_array, require, shape_of


def moe_layer(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate=None,
              shared_w_up=None, shared_w_down=None, shared_gate=None, *,
              capacity_factor: float | None = None):
    """The routed experts' weighted sum plus the shared expert; returns ``(out, kept)``.

    The router (``moe_router``) runs before this layer and hands over, per token, the ids of
    its k chosen experts and their combine weights; this layer dispatches each token to those
    experts, runs them and combines their outputs.

    Shapes: N tokens (any flattened batch), D model width, E routed experts, k slots, F and Fs
    the routed and shared hidden widths. ``x`` (N, D); ``topk_ids`` (N, k) integer in [0, E);
    ``topk_weights`` (N, k) float; ``w_gate``, ``w_up`` (E, D, F); ``w_down`` (E, F, D);
    ``shared_w_gate``, ``shared_w_up`` (D, Fs), ``shared_w_down`` (Fs, D), all three or none;
    ``shared_gate`` (D, 1), only with the shared expert. Weights are stored ``(in, out)`` as in
    ``swiglu`` (HF's nn.Linear and fused ``gate_up_proj`` hold the transposes). Outputs:
    ``out`` (N, D) in the dtype of ``x``; ``kept`` (N, k) bool.

    Math (``ffn`` is ``swiglu``: ``ffn(x; Wg, Wu, Wd) = (silu(x Wg) * (x Wu)) Wd``)::

        expert_e(x) = ffn(x; w_gate[e], w_up[e], w_down[e])
        shared(x)   = ffn(x; shared_w_gate, shared_w_up, shared_w_down)
                      * sigmoid(x @ shared_gate)          (the factor only with shared_gate:
                                                           Qwen2-MoE; DeepSeek has none)
        out_i = sum_j kept_ij * topk_weights_ij * expert_{topk_ids_ij}(x_i)  +  shared(x_i)

    The weights are used as given (no renormalization here: the router owns it). A slot may
    repeat an expert of the same token (a router never does; the sum then counts it twice).

    Capacity (GShard, Switch Transformer). With ``capacity_factor`` c, every expert takes at
    most ``C = ceil(c * N * k / E)`` assignments (``expert_capacity`` below; C = 0 drops every
    assignment). Assignments claim places in **slot-priority order**: all slot-0 assignments in
    token order, then all slot-1 assignments in token order, and so on, i.e. assignment (i, j)
    comes before (i', j') iff ``(j, i) < (j', i')``: a token's first choice outranks every
    token's second choice (GShard's top-2 gating and DeepSpeed's ``top2gating``: slot-1
    locations start after every slot-0 one; the other natural order, token-major ``(i, j)``,
    favours early tokens for all their slots and is NOT what this spec computes). An
    expert keeps its first C assignments in that order and drops the rest; ``kept_ij`` says
    whether (i, j) was kept. Dropped assignments contribute nothing (the token still gets the
    shared expert; the residual connection outside the layer carries it on). ``None``: no
    capacity, every assignment is kept. ``kept`` depends on ``topk_ids`` and the shapes only,
    so it is the same, exactly, on every backend and in every dtype.

    Precision: the matrix products accumulate in at least float32; a backend may compute in
    float32 and round ``out`` once. Gradients: with respect to ``x``, ``topk_weights`` and all
    weight arrays (a dropped slot's weight gets exactly zero); ``kept`` is discrete and
    carries none.

    Expert parallelism is the same function: with experts split E/R over R ranks and tokens
    over ranks in order (rank 0's first), the backends' ``expert_parallel_moe_layer``
    (torch.distributed all-to-all; JAX shard_map over an "expert" mesh axis) must give the
    rows and ``kept`` of this layer on all tokens (capacity counted over all of them).

    Rejected: ``topk_ids`` not integer (TypeError); an id outside [0, E) (IndexError naming
    ``topk_ids``); shape mismatches, some but not all shared weights, ``shared_gate`` without
    a shared expert, ``capacity_factor <= 0`` (ValueError naming the argument).
    """
    check_args(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate, shared_w_up,
               shared_w_down, shared_gate, capacity_factor=capacity_factor)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def expert_capacity(n_tokens: int, top_k: int, n_experts: int,
                    capacity_factor: float | None) -> int | None:
    """``C = ceil(capacity_factor * N * k / E)`` places per expert (None: unlimited).

    Computed in Python floats, exactly as written, by every implementation: a different
    rounding of the same formula (``int(c * N * k / E + 1)``, ...) would drop different tokens.
    """
    if capacity_factor is None:
        return None
    return int(math.ceil(capacity_factor * n_tokens * top_k / max(n_experts, 1)))


def check_args(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate=None,
               shared_w_up=None, shared_w_down=None, shared_gate=None, *,
               capacity_factor: float | None = None) -> None:
    xs, ids, ws = shape_of(x), shape_of(topk_ids), shape_of(topk_weights)
    require(len(xs) == 2, ValueError, f"x: expected shape (N, D), got {xs}")
    n, d = xs
    require(is_integer_array(topk_ids), TypeError,
            f"topk_ids: expected an integer array, got dtype {getattr(topk_ids, 'dtype', '?')}")
    require(len(ids) == 2 and ids[0] == n, ValueError,
            f"topk_ids: expected shape ({n}, k), got {ids}")
    require(ws == ids, ValueError, f"topk_weights: expected the shape of topk_ids {ids}, got {ws}")
    gs = shape_of(w_gate)
    require(len(gs) == 3 and gs[1] == d, ValueError,
            f"w_gate: expected shape (E, {d}, F), got {gs}")
    require(shape_of(w_up) == gs, ValueError,
            f"w_up: expected the shape of w_gate {gs}, got {shape_of(w_up)}")
    want = (gs[0], gs[2], d)
    require(shape_of(w_down) == want, ValueError,
            f"w_down: expected shape {want}, got {shape_of(w_down)}")
    shared = (shared_w_gate, shared_w_up, shared_w_down)
    require(all(a is None for a in shared) or all(a is not None for a in shared), ValueError,
            "shared_w_gate: shared_w_gate, shared_w_up and shared_w_down come together")
    if shared_w_gate is not None:
        sg = shape_of(shared_w_gate)
        require(len(sg) == 2 and sg[0] == d, ValueError,
                f"shared_w_gate: expected shape ({d}, Fs), got {sg}")
        require(shape_of(shared_w_up) == sg, ValueError,
                f"shared_w_up: expected the shape of shared_w_gate {sg}, got "
                f"{shape_of(shared_w_up)}")
        require(shape_of(shared_w_down) == (sg[1], d), ValueError,
                f"shared_w_down: expected shape ({sg[1]}, {d}), got {shape_of(shared_w_down)}")
    if shared_gate is not None:
        require(shared_w_gate is not None, ValueError,
                "shared_gate: a shared-expert gate needs the shared expert's weights")
        require(shape_of(shared_gate) == (d, 1), ValueError,
                f"shared_gate: expected shape ({d}, 1), got {shape_of(shared_gate)}")
    require(capacity_factor is None or capacity_factor > 0, ValueError,
            f"capacity_factor: expected None or > 0, got {capacity_factor}")


def check_range(ids_min: int, ids_max: int, n_experts: int) -> None:
    """Value check, separate so that backends can compute min/max their own way."""
    require(ids_min >= 0 and ids_max < n_experts, IndexError,
            f"topk_ids: expected every id in [0, {n_experts}), got values in "
            f"[{ids_min}, {ids_max}]")


@st.composite
def _ids(draw, n: int, k: int, e: int) -> np.ndarray:
    """Distinct ids per token (what a router gives), or repeats; skewed loads half the time."""
    rng = np.random.default_rng(draw(S.seeds()))
    if k <= e and draw(st.booleans()):
        p = rng.dirichlet(np.full(e, 0.3)) + 1e-3 if draw(st.booleans()) else np.ones(e)
        rows = [rng.choice(e, k, replace=False, p=p / p.sum()) for _ in range(n)]
        return np.array(rows, dtype=np.int64).reshape(n, k)
    return draw(S.int_arrays((n, k), 0, e))


@st.composite
def moe_cases(draw) -> Case:
    n = draw(S.sizes((8, 5, 13, 3, 2, 1, 0)))  # informative first (see below)
    d = draw(st.sampled_from((3, 1, 8)))
    e = draw(st.sampled_from((4, 8, 3, 2, 1)))
    k = draw(st.sampled_from((2, 3, 1)))
    f = draw(st.sampled_from((1, 2, 5, 8)))
    w = dict(scales=(0.3, 1.0), styles=("normal", "uniform", "ties"))
    arrays = {
        "x": draw(S.float_arrays((n, d), scales=(0.1, 1.0, 4.0))),
        "topk_ids": draw(_ids(n, k, e)),
        "topk_weights": draw(S.float_arrays((n, k), scales=(0.3, 1.0))),
        "w_gate": draw(S.float_arrays((e, d, f), **w)),
        "w_up": draw(S.float_arrays((e, d, f), **w)),
        "w_down": draw(S.float_arrays((e, f, d), **w)),
        "shared_w_gate": None, "shared_w_up": None, "shared_w_down": None, "shared_gate": None,
    }
    # the featureful choice first: hypothesis starts from the simplest examples (False, the
    # first option), and the CI budget is 20 examples
    if not draw(st.booleans()):
        fs = draw(st.sampled_from((4, 1, 6)))
        arrays["shared_w_gate"] = draw(S.float_arrays((d, fs), **w))
        arrays["shared_w_up"] = draw(S.float_arrays((d, fs), **w))
        arrays["shared_w_down"] = draw(S.float_arrays((fs, d), **w))
        if not draw(st.booleans()):
            arrays["shared_gate"] = draw(S.float_arrays((d, 1), **w))
    cf = draw(st.sampled_from((0.5, None, None, 1.0, 1.25, 2.0, 100.0)))
    return Case(arrays, {"capacity_factor": cf})


def _arrays(n=3, k=2, e=4, d=5, f=6, ids=None, **extra):
    def build():
        rng = np.random.default_rng(0)
        arrays = {
            "x": np.ones((n, d)),
            "topk_ids": (rng.integers(0, e, (n, k)) if ids is None else np.asarray(ids)),
            "topk_weights": np.ones((n, k)), "w_gate": np.ones((e, d, f)),
            "w_up": np.ones((e, d, f)), "w_down": np.ones((e, f, d)),
            "shared_w_gate": None, "shared_w_up": None, "shared_w_down": None,
            "shared_gate": None,
        }
        params = {k_: v for k_, v in extra.items() if k_ == "capacity_factor"}
        arrays.update({k_: v for k_, v in extra.items() if k_ != "capacity_factor"})
        return arrays, params
    return build


def _features(case: Case) -> dict[str, str]:
    """Capacity on (tokens over an expert's capacity are dropped) or off."""
    return {"capacity": "off" if case.params.get("capacity_factor") is None else "on"}


COMPONENT = Component(
    stem="moe_layer",
    features=_features,
    coverage={"capacity": ("off", "on"), "shared_w_up": ("given", "absent"),
              "shared_gate": ("given", "absent")},
    inputs=("x", "topk_ids", "topk_weights", "w_gate", "w_up", "w_down", "shared_w_gate",
            "shared_w_up", "shared_w_down", "shared_gate"),
    outputs=("out", "kept"),
    differentiable=("x", "topk_weights", "w_gate", "w_up", "w_down", "shared_w_gate",
                    "shared_w_up", "shared_w_down", "shared_gate"),
    integer_inputs=("topk_ids",),
    cases=moe_cases,
    errors=(
        ErrorCase("expert id equal to E", _arrays(ids=[[0, 4], [1, 2], [3, 0]]), IndexError,
                  r"topk_ids"),
        ErrorCase("negative expert id", _arrays(ids=[[0, -1], [1, 2], [3, 0]]), IndexError,
                  r"topk_ids"),
        ErrorCase("float expert ids", _arrays(ids=np.zeros((3, 2))), TypeError, r"topk_ids"),
        ErrorCase("weights shape", _arrays(topk_weights=np.ones((3, 1))), ValueError,
                  r"topk_weights"),
        ErrorCase("w_down shape", _arrays(w_down=np.ones((4, 5, 6))), ValueError, r"w_down"),
        ErrorCase("shared expert incomplete", _arrays(shared_w_gate=np.ones((5, 2))),
                  ValueError, r"shared_w"),
        ErrorCase("shared gate without shared expert", _arrays(shared_gate=np.ones((5, 1))),
                  ValueError, r"shared_gate"),
        ErrorCase("capacity factor zero", _arrays(capacity_factor=0.0), ValueError,
                  r"capacity_factor"),
    ),
    summary="MoE layer: routed SwiGLU experts, slot-priority capacity dropping, shared expert",
)
