"""Bradley-Terry reward-model loss on scalar rewards of chosen/rejected pairs, with TRL's
optional per-pair margin (Llama 2) and reward centering (Eisenstein et al. 2023)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, require, shape_of


def reward_model_loss(chosen, rejected, margin=None, *, center_coef: float = 0.0):
    """Mean Bradley-Terry negative log-likelihood that ``chosen`` beats ``rejected``.

    Shapes: ``chosen``, ``rejected`` (B,) float, B >= 1: the reward model's scalar scores;
    ``margin`` (B,) float or None (0). Output: ``loss`` (0-d), float32 or wider whatever the
    inputs' dtype (float64 in the reference).

    Math (``sp(x) = log(1 + e^x)``, so ``-log sigmoid(x) = sp(-x)``)::

        d_i  = chosen_i - rejected_i - margin_i
        loss = mean_i sp(-d_i) + center_coef * mean_i (chosen_i + rejected_i)**2

    This is TRL 1.16 ``RewardTrainer.compute_loss`` read from its source:
    ``-logsigmoid(rewards_chosen - rewards_rejected - margin).mean()`` plus
    ``center_rewards_coefficient * mean((rewards_chosen + rewards_rejected)**2)``. The margin
    is subtracted: a pair with margin m counts as won only when chosen leads by more than m.

    Properties: the loss depends on the rewards only through d (center_coef = 0); at d = 0 it
    is ln 2; swapping chosen and rejected (margin None) adds mean(chosen - rejected), since
    sp(x) - sp(-x) = x; pair order does not matter.

    Gradient (with respect to ``chosen`` and ``rejected``; the margin is data): with
    ``s_i = sigmoid(-d_i)``, ``dchosen_i = (-s_i + 2 center_coef (c_i + r_i)) / B`` and
    ``drejected_i = (s_i + 2 center_coef (c_i + r_i)) / B``, times the loss cotangent.

    Rejected: ``chosen`` not of shape (B,) with B >= 1, ``rejected`` or ``margin`` not of its
    shape (ValueError naming the argument); ``center_coef < 0`` (ValueError).
    """
    check_args(chosen, rejected, margin, center_coef=center_coef)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(chosen, rejected, margin=None, *, center_coef: float = 0.0) -> None:
    cs = shape_of(chosen)
    require(len(cs) == 1 and cs[0] >= 1, ValueError,
            f"chosen: expected shape (B,) with B >= 1, got {cs}")
    require(shape_of(rejected) == cs, ValueError,
            f"rejected: expected shape {cs}, got {shape_of(rejected)}")
    ms = None if margin is None else shape_of(margin)
    require(ms is None or ms == cs, ValueError, f"margin: expected shape {cs} or None, got {ms}")
    require(center_coef >= 0.0, ValueError, f"center_coef: expected >= 0, got {center_coef}")


@st.composite
def _cases(draw) -> Case:
    b = draw(S.nonempty((1, 2, 3, 5, 8, 13)))
    chosen = draw(S.float_arrays((b,), scales=(0.1, 1.0, 4.0, 30.0)))
    rejected = draw(S.float_arrays((b,), scales=(0.1, 1.0, 4.0, 30.0)))
    margin = draw(st.one_of(st.none(), S.float_arrays((b,), styles=("uniform", "ties"),
                                                         scales=(0.5, 3.0))))
    if margin is not None:
        margin = np.abs(margin)
    return Case({"chosen": chosen, "rejected": rejected, "margin": margin},
                {"center_coef": draw(st.sampled_from((0.0, 0.0, 0.01)))})


def _pair(**kw):
    arrays = {"chosen": np.zeros(3), "rejected": np.zeros(3), "margin": None}
    arrays.update({k: v for k, v in kw.items() if k != "params"})
    return arrays, kw.get("params", {})


COMPONENT = Component(
    stem="reward_model_loss",
    coverage={"margin": ("given", "absent"), "center_coef": ("0.0", "0.01")},
    inputs=("chosen", "rejected", "margin"),
    outputs=("loss",),
    differentiable=("chosen", "rejected"),
    wide_outputs=("loss",),
    cases=_cases,
    errors=(
        ErrorCase("rejected of another length", lambda: _pair(rejected=np.zeros(2)), ValueError,
                  r"rejected"),
        ErrorCase("margin of another length", lambda: _pair(margin=np.zeros(4)), ValueError,
                  r"margin"),
        ErrorCase("no pairs", lambda: _pair(chosen=np.zeros(0), rejected=np.zeros(0)),
                  ValueError, r"chosen"),
        ErrorCase("negative centering", lambda: _pair(params={"center_coef": -1.0}), ValueError,
                  r"center_coef"),
    ),
    summary="reward model: Bradley-Terry -log sigmoid(chosen - rejected - margin), centering",
)
