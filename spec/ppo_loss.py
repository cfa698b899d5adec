"""PPO-clip loss (Schulman et al., 2017, arXiv:1707.06347) with a clipped value loss, in the
conventions of OpenAI's lm-human-preferences / baselines as ported by TRL's PPOTrainer."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, is_integer_array, require, shape_of
from lmspec.spec.grpo_loss import DELTAS, GRID

VALUE_HALF = 0.5  # TRL/baselines: vf_loss = 0.5 * masked_mean(max(...))
_VALUE_CLIPS = (0.2, 0.1, 0.5)
# values - old_values on the 1/64 grid, at least 0.03 from every value clip edge drawn below
VALUE_DELTAS = tuple(k / GRID for k in range(-40, 41)
                     if all(abs(abs(k / GRID) - c) > 0.03 for c in _VALUE_CLIPS))

_ARRAYS = ("logp", "old_logp", "advantages", "values", "old_values", "returns", "mask")


def ppo_loss(logp, old_logp, advantages, values, old_values, returns, mask, *,
             clip_range: float = 0.2, clip_range_value: float = 0.2, vf_coef: float = 0.1):
    """Returns ``(loss, pg_loss, vf_loss)``, three 0-d floats (float32 or wider).

    Shapes: every array (B, T); ``logp`` (current policy, differentiable), ``old_logp``
    (rollout policy), ``advantages`` (already whitened if wanted: see gae), ``values``
    (current value head, differentiable), ``old_values`` (rollout values), ``returns`` (the
    value targets) float; ``mask`` integer 0/1. Math (TRL ``PPOTrainer.train``, read at trl
    1.10.0.dev0, commit f2cd577, ``trl/experimental/ppo/ppo_trainer.py``), with
    ``masked_mean(x) = sum(m x) / max(sum m, 1)``::

        ratio   = exp(logp - old_logp)
        pg_loss = masked_mean(max(-A ratio, -A clip(ratio, 1 - clip_range, 1 + clip_range)))
        v_clip  = clip(values, old_values - clip_range_value, old_values + clip_range_value)
        vf_loss = VALUE_HALF * masked_mean(max((values - R)^2, (v_clip - R)^2))
        loss    = pg_loss + vf_coef * vf_loss

    Defaults are TRL's PPOConfig (cliprange 0.2, cliprange_value 0.2, vf_coef 0.1). TRL masks
    the value loss with a mask one token longer (``padding_mask_p1``); here one mask serves
    both (pass the wider one to reproduce TRL's value loss exactly). An empty mask gives 0
    (TRL's masked_mean divides by 0 there). Gradients: ``dpg/dlogp = -A ratio`` where the
    unclipped term is the max, else 0; ``dvf/dvalues = (values - R)`` where the unclipped
    square is the max, else 0; both times ``m / max(sum m, 1)``.

    Rejected: shapes that differ (ValueError naming the array); ``mask`` not integer
    (TypeError) or not 0/1 (ValueError); ``clip_range`` outside [0, 1); ``clip_range_value``
    or ``vf_coef`` negative (ValueError naming the argument).
    """
    check_args(logp, old_logp, advantages, values, old_values, returns, mask,
               clip_range=clip_range, clip_range_value=clip_range_value, vf_coef=vf_coef)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(logp, old_logp, advantages, values, old_values, returns, mask, *,
               clip_range: float = 0.2, clip_range_value: float = 0.2,
               vf_coef: float = 0.1) -> None:
    ls = shape_of(logp)
    require(len(ls) == 2, ValueError, f"logp: expected shape (B, T), got {ls}")
    for name, a in zip(_ARRAYS[1:], (old_logp, advantages, values, old_values, returns, mask)):
        require(shape_of(a) == ls, ValueError, f"{name}: expected shape {ls}, got {shape_of(a)}")
    require(is_integer_array(mask), TypeError, f"mask: expected an integer 0/1 array, got "
            f"dtype {mask.dtype}")
    require(0.0 <= clip_range < 1.0, ValueError, f"clip_range: expected a value in [0, 1), got "
            f"{clip_range}")
    require(clip_range_value >= 0.0, ValueError,
            f"clip_range_value: expected >= 0, got {clip_range_value}")
    require(vf_coef >= 0.0, ValueError, f"vf_coef: expected >= 0, got {vf_coef}")


def check_mask(mask_np: np.ndarray) -> None:
    require(bool(np.all((mask_np == 0) | (mask_np == 1))), ValueError,
            "mask: expected values in {0, 1}")


def _away_from_value_ties(v, old, ret, c):
    """Move returns so that max((v - R)^2, (v_clip - R)^2) is never a near tie (its choice
    decides the gradient): R far from the midpoint of v and v_clip wherever they differ."""
    vc = np.clip(v, old - c, old + c)
    for _ in range(3):
        a, b = (v - ret) ** 2, (vc - ret) ** 2
        tie = (v != vc) & (np.abs(a - b) <= 0.05 * np.maximum(a, b) + 0.05)
        ret = np.where(tie, ret + 0.5, ret)
    return ret


@st.composite
def _cases(draw) -> Case:
    b = draw(S.sizes((3, 1, 2, 0)))
    t = draw(S.sizes((5, 1, 8, 0)))
    rng = np.random.default_rng(draw(S.seeds()))
    logp = -rng.integers(0, 200, (b, t)) / GRID
    old = logp - rng.choice(DELTAS, (b, t))
    adv = draw(S.float_arrays((b, t), styles=("normal", "ties", "uniform"), scales=(1.0, 0.1)))
    # values on the 1/64 grid within (-2, 2): differences exact in bfloat16
    values = rng.integers(-120, 121, (b, t)) / GRID
    old_values = values - rng.choice(VALUE_DELTAS, (b, t))
    c = draw(st.sampled_from(_VALUE_CLIPS))
    returns = _away_from_value_ties(values, old_values, rng.integers(-120, 121, (b, t)) / GRID,
                                    c)
    lengths = rng.integers(0, t + 1, b)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
    if draw(st.booleans()):
        mask = np.ones((b, t), np.int64)
    return Case({"logp": logp, "old_logp": old, "advantages": adv, "values": values,
                 "old_values": old_values, "returns": returns, "mask": mask},
                {"clip_range": draw(st.sampled_from((0.2, 0.1))), "clip_range_value": c,
                 "vf_coef": draw(st.sampled_from((0.1, 1.0, 0.0)))})


def _bad(shape_of_returns=(2, 3), mask=None, **params):
    def build():
        arrays = {n: np.zeros((2, 3)) for n in _ARRAYS[:-1]}
        arrays["returns"] = np.zeros(shape_of_returns)
        arrays["mask"] = np.ones((2, 3), np.int64) if mask is None else np.asarray(mask)
        return arrays, params
    return build


COMPONENT = Component(
    stem="ppo_loss",
    coverage={"vf_coef": ("0.0", "0.1", "1.0"), "clip_range": ("0.1", "0.2")},
    inputs=_ARRAYS,
    outputs=("loss", "pg_loss", "vf_loss"),
    differentiable=("logp", "values"),
    integer_inputs=("mask",),
    wide_outputs=("loss", "pg_loss", "vf_loss"),
    cases=_cases,
    errors=(
        ErrorCase("returns of the wrong shape", _bad(shape_of_returns=(2, 2)), ValueError,
                  r"returns"),
        ErrorCase("mask value 3", _bad(mask=np.full((2, 3), 3, np.int64)), ValueError, r"mask"),
        ErrorCase("clip range 1", _bad(clip_range=1.0), ValueError, r"clip_range"),
        ErrorCase("negative value clip", _bad(clip_range_value=-0.1), ValueError,
                  r"clip_range_value"),
    ),
    summary="PPO-clip: clipped surrogate + clipped value loss (TRL/baselines masked means)",
)
