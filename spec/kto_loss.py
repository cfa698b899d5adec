"""KTO loss (Ethayarajh et al. 2024): unpaired desirable/undesirable examples against a
detached, clamped KL baseline estimated from mismatched pairs, as in TRL's KTOTrainer."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, is_integer_array, require, shape_of


def kto_loss(policy_logps, ref_logps, desirable, policy_kl_logps, ref_kl_logps, *,
             beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
    """Mean KTO loss over B examples, and the KL baseline z0.

    Shapes: ``policy_logps``, ``ref_logps`` (B,) float, B >= 1 (summed response log-probs,
    ``sequence_logprob``'s ``logps``); ``desirable`` (B,) bool or integer 0/1;
    ``policy_kl_logps``, ``ref_kl_logps`` (M,) float, M >= 1: the log-probs of mismatched
    (prompt, response) pairs (TRL pairs each prompt with another example's completion).
    Outputs: ``loss`` (0-d) and ``kl`` (0-d, the baseline z0), float32 or wider whatever the
    inputs' dtype (float64 in the reference).

    Math (``r_i = policy_i - ref_i``, ``w`` = desirable_weight / undesirable_weight)::

        z0   = max(mean_j (policy_kl_j - ref_kl_j), 0)        # no gradient flows through z0
        l_i  = w_d (1 - sigmoid(beta (r_i - z0)))   if desirable_i
               w_u (1 - sigmoid(beta (z0 - r_i)))   otherwise
        loss = (1 / B) sum_i l_i

    Convention read from TRL 1.16 ``KTOTrainer._compute_loss``: ``kl = (KL_logps -
    ref_KL_logps).mean().detach()``, gathered over processes, ``.clamp(min=0)``;
    ``chosen_losses = 1 - sigmoid(beta (chosen_logratios - kl))``, ``rejected_losses = 1 -
    sigmoid(beta (kl - rejected_logratios))``; the loss is ``nanmean`` of the concatenation
    ``(w_d * chosen_losses, w_u * rejected_losses)``: a mean over all B examples (not the sum
    of a mean per class), so the classes weigh by their counts. TRL's ``apo_zero_unpaired``
    variant is not covered. ``1 - sigmoid(x)`` is computed as ``sigmoid(-x)`` (the same value,
    without cancellation).

    Gradient (with respect to ``policy_logps`` and ``policy_kl_logps``; ``ref_*`` are
    constants): with ``x_i = beta (r_i - z0)`` and ``s_i = beta sigmoid(x_i) sigmoid(-x_i)``,
    ``dpolicy_i = (-w_d s_i if desirable_i else w_u s_i) / B`` times the loss cotangent, and
    ``dpolicy_kl = 0`` exactly: the baseline is detached. Letting the gradient flow through
    z0 (or dropping the clamp) is a bug the suite must catch. ``kl`` has no gradient.

    Rejected: ``policy_logps`` not of shape (B,) with B >= 1, ``ref_logps`` or ``desirable``
    not of its shape, ``policy_kl_logps`` not of shape (M,) with M >= 1 or ``ref_kl_logps``
    not of its shape (ValueError naming the argument); ``desirable`` not bool/integer
    (TypeError) or not 0/1 (ValueError); ``beta <= 0`` or a negative weight (ValueError).
    """
    check_args(policy_logps, ref_logps, desirable, policy_kl_logps, ref_kl_logps, beta=beta,
               desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(policy_logps, ref_logps, desirable, policy_kl_logps, ref_kl_logps, *,
               beta: float = 0.1, desirable_weight: float = 1.0,
               undesirable_weight: float = 1.0) -> None:
    ps, ks = shape_of(policy_logps), shape_of(policy_kl_logps)
    require(len(ps) == 1 and ps[0] >= 1, ValueError,
            f"policy_logps: expected shape (B,) with B >= 1, got {ps}")
    for name, a in (("ref_logps", ref_logps), ("desirable", desirable)):
        require(shape_of(a) == ps, ValueError, f"{name}: expected shape {ps}, got {shape_of(a)}")
    require(len(ks) == 1 and ks[0] >= 1, ValueError,
            f"policy_kl_logps: expected shape (M,) with M >= 1, got {ks}")
    require(shape_of(ref_kl_logps) == ks, ValueError,
            f"ref_kl_logps: expected shape {ks}, got {shape_of(ref_kl_logps)}")
    kind = str(getattr(desirable, "dtype", "")).replace("torch.", "")
    require(is_integer_array(desirable) or kind == "bool", TypeError,
            f"desirable: expected a bool or integer array, got dtype {kind}")
    require(beta > 0.0, ValueError, f"beta: expected > 0, got {beta}")
    require(desirable_weight >= 0.0, ValueError,
            f"desirable_weight: expected >= 0, got {desirable_weight}")
    require(undesirable_weight >= 0.0, ValueError,
            f"undesirable_weight: expected >= 0, got {undesirable_weight}")


def check_labels(desirable_np: np.ndarray) -> None:
    d = np.asarray(desirable_np).astype(np.int64)
    bad = d[(d != 0) & (d != 1)]
    require(bad.size == 0, ValueError,
            f"desirable: expected values 0 or 1, got {sorted(set(bad.tolist()))[:4]}")


@st.composite
def _cases(draw) -> Case:
    b = draw(S.nonempty((1, 2, 3, 5, 8, 13)))
    m = draw(S.nonempty((1, 2, 5, 8)))
    scale = draw(st.sampled_from((1.0, 10.0, 100.0)))
    rng = np.random.default_rng(draw(S.seeds()))
    spread = draw(st.sampled_from((0.1, 1.0, 30.0)))
    ref, ref_kl = -np.abs(rng.standard_normal(b)) * scale, -np.abs(rng.standard_normal(m)) * scale
    # the KL estimate: positive, negative (clamped) or near zero
    kl_shift = draw(st.sampled_from((-1.0, 0.0, 1.0)))
    frac = draw(st.sampled_from((0.0, 0.5, 1.0)))
    return Case({"policy_logps": ref + rng.standard_normal(b) * spread, "ref_logps": ref,
                 "desirable": (rng.uniform(size=b) < frac).astype(np.int64),
                 "policy_kl_logps": ref_kl + (rng.standard_normal(m) + kl_shift) * spread,
                 "ref_kl_logps": ref_kl},
                {"beta": draw(st.sampled_from((0.01, 0.1, 0.5, 2.0))),
                 "desirable_weight": draw(st.sampled_from((1.0, 1.33))),
                 "undesirable_weight": draw(st.sampled_from((1.0, 0.5)))})


def _examples(**kw):
    arrays = {"policy_logps": -np.ones(3), "ref_logps": -np.ones(3),
              "desirable": np.array([1, 0, 1]), "policy_kl_logps": -np.ones(2),
              "ref_kl_logps": -np.ones(2)}
    arrays.update({k: v for k, v in kw.items() if k != "params"})
    return arrays, kw.get("params", {})


COMPONENT = Component(
    stem="kto_loss",
    coverage={"desirable_weight": ("1.0", "1.33"), "undesirable_weight": ("0.5", "1.0")},
    inputs=("policy_logps", "ref_logps", "desirable", "policy_kl_logps", "ref_kl_logps"),
    outputs=("loss", "kl"),
    differentiable=("policy_logps", "policy_kl_logps"),
    integer_inputs=("desirable",),
    wide_outputs=("loss", "kl"),
    cases=_cases,
    errors=(
        ErrorCase("desirable value 2", lambda: _examples(desirable=np.array([1, 2, 0])),
                  ValueError, r"desirable"),
        ErrorCase("desirable of another length", lambda: _examples(desirable=np.array([1, 0])),
                  ValueError, r"desirable"),
        ErrorCase("no KL pairs", lambda: _examples(policy_kl_logps=np.zeros(0),
                                                   ref_kl_logps=np.zeros(0)),
                  ValueError, r"policy_kl_logps"),
        ErrorCase("beta zero", lambda: _examples(params={"beta": 0.0}), ValueError, r"beta"),
        ErrorCase("negative undesirable weight",
                  lambda: _examples(params={"undesirable_weight": -1.0}), ValueError,
                  r"undesirable_weight"),
    ),
    summary="KTO: desirable/undesirable losses against a detached, clamped KL baseline",
)
