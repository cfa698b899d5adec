"""Pairwise preference losses on sequence log-probs: DPO (Rafailov et al. 2023) with cDPO label
smoothing, robust DPO (Chowdhury et al. 2024) and IPO (Azar et al. 2023), as in TRL."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, require, shape_of

LOSS_TYPES = ("sigmoid", "robust", "ipo")


def preference_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *,
                    beta: float = 0.1, loss_type: str = "sigmoid",
                    label_smoothing: float = 0.0):
    """Mean preference loss over B pairs, and the implicit rewards of both sides.

    Shapes: four (B,) float arrays, B >= 1: the policy's and the frozen reference model's
    log-probs of the chosen and of the rejected response (``sequence_logprob``'s ``logps``).
    Outputs: ``loss`` (0-d), ``chosen_rewards`` (B,), ``rejected_rewards`` (B,), all float32
    or wider whatever the inputs' dtype (float64 in the reference).

    Math (``eps`` = ``label_smoothing``, ``sp(x) = log(1 + e^x) = -log sigmoid(-x)``)::

        h_i              = (pc_i - rc_i) - (pr_i - rr_i)        # the log-ratio margin
        chosen_rewards   = beta (pc - rc)
        rejected_rewards = beta (pr - rr)
        sigmoid: l_i = (1 - eps) sp(-beta h_i) + eps sp(beta h_i)      # DPO; eps > 0: cDPO
        robust:  l_i = ((1 - eps) sp(-beta h_i) - eps sp(beta h_i)) / (1 - 2 eps)
        ipo:     l_i = (h_i - 1 / (2 beta))**2
        loss     = mean_i l_i

    Conventions and where they come from (read from TRL's source; its loss is inline in a
    trainer method and cannot be called without a model):
    - TRL 1.16 ``DPOTrainer._compute_loss``: ``delta_score = chosen_logratios -
      rejected_logratios``; sigmoid ``-logsigmoid(beta * delta)`` (no smoothing there);
      robust ``(-(1 - ls) logsigmoid(beta d) + ls logsigmoid(-beta d)) / (1 - 2 ls)``;
      ipo ``(delta - 1 / (2 beta))**2``; ``per_sequence_loss.mean()``; rewards
      ``beta * logratios.detach()``. TRL 0.x ``dpo_loss`` applied ``label_smoothing`` to
      sigmoid as above (cDPO); the spec keeps that form, which equals 1.16's at eps = 0.
    - IPO: TRL divides each side's summed log-ratio by its completion token count before
      taking h (the form its authors confirmed). Here h is taken of whatever is passed: pass
      ``logps / max(counts, 1)`` from ``sequence_logprob`` for all four inputs to get TRL's
      IPO; pass the sums for the paper's unnormalized form.
    - The robust loss is an unbiased estimate of the clean DPO loss under preference labels
      flipped with probability eps; cDPO (sigmoid, eps > 0) is the eps-mixture of both
      orders.

    Properties: at policy == reference (h = 0) sigmoid and robust give ln 2, IPO 1/(4 beta^2).
    Swapping chosen and rejected (h -> -h, the rewards swap) gives exactly
    ``l(-h) - l(h) = kappa h`` with kappa = (1 - 2 eps) beta (sigmoid), beta / (1 - 2 eps)
    (robust), 2 / beta (ipo), since sp(x) - sp(-x) = x. DPO at eps = 0 is the Bradley-Terry
    loss (``reward_model_loss``) on the implicit rewards. As h -> +inf the sigmoid gradient
    vanishes at eps = 0 (it tends to eps beta otherwise).

    Gradient: with respect to ``policy_chosen`` and ``policy_rejected`` only (``dl/dh`` times
    +1 / -1, over B, times the loss cotangent). The reference log-probs are constants (TRL
    computes them under no_grad); the rewards are metrics and carry no gradient (TRL detaches
    them): their cotangents are ignored.

    Rejected: inputs not all of one shape (B,) with B >= 1 (ValueError naming the argument);
    ``beta <= 0``; an unknown ``loss_type``; ``label_smoothing`` outside [0, 0.5), or nonzero
    with ``ipo`` (ValueError naming the parameter).
    """
    check_args(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta,
               loss_type=loss_type, label_smoothing=label_smoothing)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float = 0.1,
               loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> None:
    ps = shape_of(policy_chosen)
    require(len(ps) == 1 and ps[0] >= 1, ValueError,
            f"policy_chosen: expected shape (B,) with B >= 1, got {ps}")
    for name, a in (("policy_rejected", policy_rejected), ("ref_chosen", ref_chosen),
                    ("ref_rejected", ref_rejected)):
        require(shape_of(a) == ps, ValueError, f"{name}: expected shape {ps}, got {shape_of(a)}")
    require(beta > 0.0, ValueError, f"beta: expected > 0, got {beta}")
    require(loss_type in LOSS_TYPES, ValueError,
            f"loss_type: expected one of {LOSS_TYPES}, got {loss_type!r}")
    require(0.0 <= label_smoothing < 0.5, ValueError,
            f"label_smoothing: expected a value in [0, 0.5), got {label_smoothing}")
    require(loss_type != "ipo" or label_smoothing == 0.0, ValueError,
            f"label_smoothing: ipo has no label smoothing, got {label_smoothing}")


def swap_slope(beta: float, loss_type: str, label_smoothing: float) -> float:
    """kappa of ``l(-h) - l(h) = kappa h`` (the swap property above)."""
    eps = label_smoothing
    return {"sigmoid": (1 - 2 * eps) * beta, "robust": beta / (1 - 2 * eps),
            "ipo": 2 / beta}[loss_type]


NAMES = ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")


@st.composite
def _cases(draw) -> Case:
    b = draw(S.nonempty((1, 2, 3, 5, 8, 13)))
    scale = draw(st.sampled_from((1.0, 10.0, 100.0)))
    rng = np.random.default_rng(draw(S.seeds()))
    # log-probs of responses: negative sums; the policy near the reference (small margins)
    # or far from it (saturated sigmoids)
    ref = -np.abs(rng.standard_normal((2, b))) * scale
    spread = draw(st.sampled_from((0.0, 0.1, 1.0, 30.0)))
    pol = ref + rng.standard_normal((2, b)) * spread
    loss_type = draw(st.sampled_from(LOSS_TYPES))
    eps = 0.0 if loss_type == "ipo" else draw(st.sampled_from((0.0, 0.1, 0.3)))
    return Case({"policy_chosen": pol[0], "policy_rejected": pol[1], "ref_chosen": ref[0],
                 "ref_rejected": ref[1]},
                {"beta": draw(st.sampled_from((0.01, 0.1, 0.5, 2.0))), "loss_type": loss_type,
                 "label_smoothing": eps})


def _pairs(b=3, **params):
    return ({n: -np.arange(1.0, b + 1) for n in NAMES}, params)


COMPONENT = Component(
    stem="preference_loss",
    coverage={"loss_type": ("ipo", "robust", "sigmoid"), "label_smoothing": ("0.0", "0.1", "0.3")},
    inputs=NAMES,
    outputs=("loss", "chosen_rewards", "rejected_rewards"),
    differentiable=("policy_chosen", "policy_rejected"),
    wide_outputs=("loss", "chosen_rewards", "rejected_rewards"),
    cases=_cases,
    errors=(
        ErrorCase("beta zero", lambda: _pairs(beta=0.0), ValueError, r"beta"),
        ErrorCase("unknown loss type", lambda: _pairs(loss_type="hinge"), ValueError,
                  r"loss_type"),
        ErrorCase("label smoothing of one half", lambda: _pairs(label_smoothing=0.5),
                  ValueError, r"label_smoothing"),
        ErrorCase("ipo with label smoothing",
                  lambda: _pairs(loss_type="ipo", label_smoothing=0.1), ValueError,
                  r"label_smoothing"),
        ErrorCase("no pairs", lambda: _pairs(b=0), ValueError, r"policy_chosen"),
        ErrorCase("ref_rejected of another length",
                  lambda: ({**_pairs()[0], "ref_rejected": np.zeros(2)}, {}), ValueError,
                  r"ref_rejected"),
    ),
    summary="preference losses: DPO (sigmoid, cDPO smoothing), robust DPO, IPO; rewards",
)
