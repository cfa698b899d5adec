"""Per-sequence log-probability of a response: the sum of token log-probs over masked positions
(what DPO, KTO and GRPO feed their losses; TRL's per-token log-probs summed over the
completion mask)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, is_integer_array, require, shape_of


def sequence_logprob(logits, targets, mask):
    """Summed log-probabilities of ``targets`` over the positions where ``mask`` is 1.

    Shapes: ``logits`` (B, T, V) float with V >= 1; ``targets`` (B, T) integer; ``mask``
    (B, T) integer or bool holding 0/1 (1 = a response token). B and T may be 0. Outputs:
    ``logps`` (B,) and ``counts`` (B,), both float32 or wider whatever the logits' dtype
    (float64 in the reference).

    Math, per sequence b::

        logp[b, t] = logits[b, t, targets[b, t]] - logsumexp_v logits[b, t, v]
        logps[b]   = sum_t mask[b, t] * logp[b, t]
        counts[b]  = sum_t mask[b, t]

    Alignment is the caller's: ``logits[b, t]`` is the distribution that predicts
    ``targets[b, t]`` (for a causal LM, logits[:, :-1] against input_ids[:, 1:], the mask
    shifted with the targets; TRL's ``completion_mask[..., 1:]``). The mean log-prob that TRL's
    IPO uses is ``logps / max(counts, 1)``.

    Masked-out positions (mask 0: prompt and padding) are never read: their target may be any
    integer (HF's -100 label included) and their logits any finite value; neither changes
    either output, and their logits get a zero gradient. Summing them too is the classic DPO
    bug (the prompt's log-prob enters both sides and is not constant under training).

    Gradient (with respect to ``logits``; ``counts`` has none), for cotangent ``g`` (B,) of
    ``logps``: ``dlogits[b, t] = g[b] mask[b, t] (onehot(targets[b, t]) - softmax(logits[b, t]))``.

    Rejected: ``targets`` or ``mask`` not integer (TypeError) or not of shape (B, T)
    (ValueError); ``mask`` values other than 0/1 (ValueError naming ``mask``); a target outside
    [0, V) where ``mask`` is 1 (IndexError naming ``targets``).
    """
    check_args(logits, targets, mask)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def _integer_or_bool(a) -> bool:
    return is_integer_array(a) or str(getattr(a, "dtype", "")).replace("torch.", "") == "bool"


def check_args(logits, targets, mask) -> None:
    ls, ts, ms = shape_of(logits), shape_of(targets), shape_of(mask)
    require(len(ls) == 3 and ls[-1] >= 1, ValueError,
            f"logits: expected shape (B, T, V) with V >= 1, got {ls}")
    require(ts == ls[:2], ValueError, f"targets: expected shape {ls[:2]}, got {ts}")
    require(ms == ls[:2], ValueError, f"mask: expected shape {ls[:2]}, got {ms}")
    require(is_integer_array(targets), TypeError,
            f"targets: expected an integer array, got dtype {targets.dtype}")
    require(_integer_or_bool(mask), TypeError,
            f"mask: expected an integer or bool array of 0/1, got dtype {mask.dtype}")


def check_values(targets_np: np.ndarray, mask_np: np.ndarray, vocab: int) -> None:
    """Value checks on host arrays, shared so that every backend rejects the same inputs."""
    m = np.asarray(mask_np).astype(np.int64)
    bad = m[(m != 0) & (m != 1)]
    require(bad.size == 0, ValueError,
            f"mask: expected values 0 or 1, got {sorted(set(bad.tolist()))[:4]}")
    used = np.asarray(targets_np)[m == 1]
    if used.size:
        lo, hi = int(used.min()), int(used.max())
        require(lo >= 0 and hi < vocab, IndexError,
                f"targets: expected values in [0, {vocab}) where mask is 1, "
                f"got values in [{lo}, {hi}]")


@st.composite
def _cases(draw) -> Case:
    b = draw(S.sizes((0, 1, 2, 3, 5)))
    t = draw(S.sizes((0, 1, 2, 7, 13)))
    v = draw(S.sizes((1, 2, 5, 16, 33), min_size=1))
    logits = draw(S.float_arrays((b, t, v), scales=(0.1, 1.0, 10.0, 1e3)))
    targets = draw(S.int_arrays((b, t), 0, v))
    rng = np.random.default_rng(draw(S.seeds()))
    style = draw(st.sampled_from(("prompt_then_response", "random", "all", "none")))
    if style == "prompt_then_response":  # a prompt, then the response, then padding
        start = rng.integers(0, t + 1, b)[:, None]
        stop = np.maximum(start, rng.integers(0, t + 1, b)[:, None])
        pos = np.arange(t)[None, :]
        mask = ((pos >= start) & (pos < stop)).astype(np.int64)
    elif style == "random":
        mask = (rng.uniform(size=(b, t)) < 0.5).astype(np.int64)
    else:
        mask = np.full((b, t), int(style == "all"), np.int64)
    if draw(st.booleans()):  # HF labels: -100 where the mask is 0
        targets = np.where(mask == 1, targets, -100)
    return Case({"logits": logits, "targets": targets, "mask": mask})


def _args(targets=(0, 1), mask=(1, 1), v=3):
    return ({"logits": np.zeros((1, 2, v)), "targets": np.array([targets], np.int64),
             "mask": np.array([mask], np.int64)}, {})


COMPONENT = Component(
    stem="sequence_logprob",
    inputs=("logits", "targets", "mask"),
    outputs=("logps", "counts"),
    differentiable=("logits",),
    integer_inputs=("targets", "mask"),
    wide_outputs=("logps", "counts"),
    cases=_cases,
    errors=(
        ErrorCase("target equal to V under the mask", lambda: _args(targets=(0, 3)), IndexError,
                  r"targets"),
        ErrorCase("mask value 2", lambda: _args(mask=(1, 2)), ValueError, r"mask"),
        ErrorCase("mask of the wrong shape",
                  lambda: ({"logits": np.zeros((1, 2, 3)), "targets": np.zeros((1, 2), np.int64),
                            "mask": np.ones((1, 3), np.int64)}, {}), ValueError, r"mask"),
        ErrorCase("logits without a batch axis",
                  lambda: ({"logits": np.zeros((2, 3)), "targets": np.zeros(2, np.int64),
                            "mask": np.ones(2, np.int64)}, {}), ValueError, r"logits"),
    ),
    summary="sequence log-prob: sum of target log-probs over the response mask, and its count",
)
