"""Generalized advantage estimation (Schulman et al., 2016, arXiv:1506.02438), with the
no-bootstrap end-of-response convention of TRL's PPOTrainer."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, is_integer_array, require, shape_of


def gae(rewards, values, mask, *, gamma: float = 1.0, lam: float = 0.95):
    """Returns ``(advantages, returns)``, both (B, T) in the dtype of ``values``.

    Shapes: ``rewards``, ``values`` (B, T) float, per response token; ``mask`` (B, T) integer
    0/1, 1 on the valid steps. Math, with ``m`` the mask and ``m_{B,T} = 0`` past the end::

        delta_t = m_t (r_t + gamma m_{t+1} V_{t+1} - V_t)
        A_t     = delta_t + gamma lam m_{t+1} A_{t+1}          (A_T = 0)
        R_t     = m_t (A_t + V_t)                               # the value targets

    Convention: the classic one of TRL's PPOTrainer (``trl/experimental/ppo/ppo_trainer.py``
    at trl 1.10.0.dev0, commit f2cd577: ``nextvalues = values[:, t + 1]`` and 0 after the last
    step, ``lastgaelam = delta + gamma * lam * lastgaelam``, ``returns = advantages +
    values``): there is no bootstrap value, the step after the last valid one is terminal. A
    masked step is a terminal boundary: it takes no value, no reward and no advantage, and the
    recursion does not run through it (for TRL's right-padded masks this is exactly TRL's
    result, whose padded values are 0). TRL whitens the advantages afterwards; that step is
    not part of this stem. Special cases: ``lam = 1`` gives ``A_t = sum_k gamma^k r_{t+k} -
    V_t`` (discounted return minus value, within the valid run); ``lam = 0`` gives the one-step
    TD error ``delta_t``.

    Not differentiable (computed from rollouts under no_grad).

    Rejected: mismatched shapes (ValueError naming the array); ``mask`` not integer
    (TypeError) or not 0/1 (ValueError); ``gamma`` or ``lam`` outside [0, 1] (ValueError).
    """
    check_args(rewards, values, mask, gamma=gamma, lam=lam)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(rewards, values, mask, *, gamma: float = 1.0, lam: float = 0.95) -> None:
    rs = shape_of(rewards)
    require(len(rs) == 2, ValueError, f"rewards: expected shape (B, T), got {rs}")
    require(shape_of(values) == rs, ValueError, f"values: expected shape {rs}, got "
            f"{shape_of(values)}")
    require(shape_of(mask) == rs, ValueError, f"mask: expected shape {rs}, got {shape_of(mask)}")
    require(is_integer_array(mask), TypeError, f"mask: expected an integer 0/1 array, got "
            f"dtype {mask.dtype}")
    require(0.0 <= gamma <= 1.0, ValueError, f"gamma: expected a value in [0, 1], got {gamma}")
    require(0.0 <= lam <= 1.0, ValueError, f"lam: expected a value in [0, 1], got {lam}")


def check_mask(mask_np: np.ndarray) -> None:
    require(bool(np.all((mask_np == 0) | (mask_np == 1))), ValueError,
            "mask: expected values in {0, 1}")


@st.composite
def _cases(draw) -> Case:
    b = draw(S.sizes((2, 1, 3, 0)))
    t = draw(S.sizes((7, 1, 2, 13, 0)))
    rewards = draw(S.float_arrays((b, t), styles=("normal", "ties", "uniform", "outliers"),
                                  scales=(1.0, 0.1, 4.0)))
    values = draw(S.float_arrays((b, t), styles=("normal", "uniform", "constant"),
                                 scales=(1.0, 0.1, 4.0)))
    rng = np.random.default_rng(draw(S.seeds()))
    style = draw(st.sampled_from(("prefix", "ones", "random")))
    if style == "prefix":
        lengths = rng.integers(0, t + 1, b)
        mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
    else:
        mask = (rng.uniform(size=(b, t)) < (1.0 if style == "ones" else 0.7)).astype(np.int64)
    return Case({"rewards": rewards, "values": values, "mask": mask},
                {"gamma": draw(st.sampled_from((0.99, 1.0, 0.9, 0.0))),
                 "lam": draw(st.sampled_from((0.95, 0.5, 1.0, 0.0)))})


def _bad(mask=None, values_shape=(2, 3), **params):
    def build():
        m = np.ones((2, 3), np.int64) if mask is None else np.asarray(mask)
        return ({"rewards": np.zeros((2, 3)), "values": np.zeros(values_shape), "mask": m},
                params)
    return build


COMPONENT = Component(
    stem="gae",
    inputs=("rewards", "values", "mask"),
    outputs=("advantages", "returns"),
    integer_inputs=("mask",),
    cases=_cases,
    errors=(
        ErrorCase("values of the wrong shape", _bad(values_shape=(2, 4)), ValueError, r"values"),
        ErrorCase("mask value -1", _bad(mask=-np.ones((2, 3), np.int64)), ValueError, r"mask"),
        ErrorCase("lam above 1", _bad(lam=1.5), ValueError, r"lam"),
        ErrorCase("negative gamma", _bad(gamma=-0.5), ValueError, r"gamma"),
    ),
    summary="GAE(gamma, lambda): advantages and returns, no bootstrap after the last step",
)
