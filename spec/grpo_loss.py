"""GRPO loss (Shao et al., 2024, DeepSeekMath, arXiv:2402.03300) with group-normalized
advantages, DAPO's clip-higher (Yu et al., 2025, arXiv:2503.14476), Dr. GRPO's constant
normalizer (Liu et al., 2025, arXiv:2503.20783) and Schulman's k3 KL estimator."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, is_integer_array, require, shape_of

STD_EPS = 1e-4  # TRL GRPOTrainer: advantages / (std + 1e-4)
STD_DDOF = 1  # TRL's nanstd applies Bessel's correction (torch.std's unbiased default)
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")


def grpo_loss(logp, old_logp, ref_logp, rewards, mask, *, group_size: int,
              epsilon: float = 0.2, epsilon_high: float | None = None, beta: float = 0.0,
              scale_rewards: bool = True, loss_type: str = "grpo",
              max_completion_length: int | None = None):
    """Returns ``(loss, advantages)``.

    Shapes: ``logp``, ``old_logp``, ``ref_logp`` (B, T) float: per-token log-probs of the
    completion tokens under the current policy (differentiable), the sampling policy and the
    reference model; ``rewards`` (B,) float, B = n_groups * group_size with each group's
    completions consecutive; ``mask`` (B, T) integer 0/1, 1 on completion tokens. Outputs:
    ``loss`` 0-d and ``advantages`` (B,), float32 or wider (float64 in the reference).

    Math (TRL ``GRPOTrainer`` read at trl 1.10.0.dev0, commit f2cd577: ``_generate_and_score``
    with ``scale_rewards="group"`` and ``_compute_loss`` with ``importance_sampling_level=
    "token"``), with ``A_b`` the advantage of row b, ``m`` the mask::

        mean_g = mean of the group's rewards
        std_g  = sqrt(sum (r - mean_g)^2 / (group_size - STD_DDOF))   # 0 when group_size == 1
        A_b    = (r_b - mean_g) / (std_g + STD_EPS)   if scale_rewards else r_b - mean_g
        ratio  = exp(logp - old_logp)
        k3     = exp(ref_logp - logp) - (ref_logp - logp) - 1          # >= 0, 0 at logp == ref
        l_bt   = -min(ratio A_b, clip(ratio, 1 - epsilon, 1 + epsilon_high) A_b) + beta k3

    ``epsilon_high`` defaults to ``epsilon`` (DAPO uses 0.2 / 0.28). k3 is Schulman's
    estimator of KL(pi || ref) (http://joschu.net/blog/kl-approx.html), evaluated on samples
    of pi: the sign of ``ref_logp - logp`` matters. Reduction, ``n_b = sum_t m_bt``:

    - ``"grpo"``: ``mean_b [sum_t m_bt l_bt / max(n_b, 1)]`` (per-sequence mean, then mean);
    - ``"bnpo"``: ``sum_bt m_bt l_bt / max(sum_b n_b, 1)`` (per-token mean over the batch;
      DAPO's token-level loss on one process);
    - ``"dr_grpo"``: ``sum_bt m_bt l_bt / (B * max_completion_length)`` (a constant;
      ``max_completion_length`` defaults to T).

    ``"grpo"`` and ``"bnpo"`` agree when every row has the same number of tokens, and differ
    otherwise. With group_size 1 every advantage is 0 and only the KL term remains.
    ``advantages`` carry no gradient (TRL computes them under no_grad); only ``logp`` is
    differentiable. Gradient: ``dl_bt/dlogp_bt = -A_b ratio [ratio A_b <= clip(ratio) A_b] +
    beta (1 - exp(ref_logp - logp))``, times the reduction's weight and ``m_bt``.

    Rejected: arrays of mismatched shapes (ValueError naming the array); ``mask`` not
    integer (TypeError) or not 0/1 (ValueError); ``group_size < 1`` or not dividing B, or
    B == 0; ``epsilon`` outside [0, 1); ``epsilon_high < 0``; ``beta < 0``; an unknown
    ``loss_type``; ``max_completion_length < max(T, 1)`` (ValueError naming the argument).
    """
    check_args(logp, old_logp, ref_logp, rewards, mask, group_size=group_size, epsilon=epsilon,
               epsilon_high=epsilon_high, beta=beta, scale_rewards=scale_rewards,
               loss_type=loss_type, max_completion_length=max_completion_length)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(logp, old_logp, ref_logp, rewards, mask, *, group_size: int,
               epsilon: float = 0.2, epsilon_high: float | None = None, beta: float = 0.0,
               scale_rewards: bool = True, loss_type: str = "grpo",
               max_completion_length: int | None = None) -> None:
    ls = shape_of(logp)
    require(len(ls) == 2, ValueError, f"logp: expected shape (B, T), got {ls}")
    for name, a in (("old_logp", old_logp), ("ref_logp", ref_logp), ("mask", mask)):
        require(shape_of(a) == ls, ValueError, f"{name}: expected shape {ls}, got {shape_of(a)}")
    require(shape_of(rewards) == ls[:1], ValueError,
            f"rewards: expected shape ({ls[0]},), got {shape_of(rewards)}")
    require(is_integer_array(mask), TypeError, f"mask: expected an integer 0/1 array, got "
            f"dtype {mask.dtype}")
    require(isinstance(group_size, int) and group_size >= 1, ValueError,
            f"group_size: expected an integer >= 1, got {group_size!r}")
    require(ls[0] >= 1 and ls[0] % group_size == 0, ValueError,
            f"group_size: B = {ls[0]} must be a positive multiple of group_size={group_size}")
    require(0.0 <= epsilon < 1.0, ValueError, f"epsilon: expected a value in [0, 1), got "
            f"{epsilon}")
    require(epsilon_high is None or epsilon_high >= 0.0, ValueError,
            f"epsilon_high: expected >= 0 or None, got {epsilon_high}")
    require(beta >= 0.0, ValueError, f"beta: expected >= 0, got {beta}")
    require(loss_type in LOSS_TYPES, ValueError,
            f"loss_type: expected one of {LOSS_TYPES}, got {loss_type!r}")
    require(max_completion_length is None or max_completion_length >= max(ls[1], 1), ValueError,
            f"max_completion_length: expected >= max(T, 1) = {max(ls[1], 1)}, got "
            f"{max_completion_length}")


def check_mask(mask_np: np.ndarray) -> None:
    """Value check on a host mask, shared so that every backend rejects the same inputs."""
    require(bool(np.all((mask_np == 0) | (mask_np == 1))), ValueError,
            "mask: expected values in {0, 1}")


# Log-probs on a grid of 1/64 with |x| < 4: exact in bfloat16 and float16, so that the
# differences (the log-ratios) are exact too and every ratio is known to all dtypes.
GRID = 64.0
# log-ratios whose exp lies at least 2% from every clip edge drawn below (bf16 rounds exp and
# the edges 1 +- eps by ~0.4%): no clipping decision sits on a knife edge.
_EDGES = (0.8, 0.9, 1.1, 1.2, 1.28)
DELTAS = tuple(k / GRID for k in range(-32, 33)
               if all(abs(np.exp(k / GRID) / e - 1) > 0.02 for e in _EDGES))


@st.composite
def _cases(draw) -> Case:
    group_size = draw(st.sampled_from((4, 1, 2, 3)))
    b = group_size * draw(st.sampled_from((2, 1, 3)))
    t = draw(S.sizes((5, 1, 3, 8, 0)))
    rng = np.random.default_rng(draw(S.seeds()))
    logp = -rng.integers(0, 200, (b, t)) / GRID
    old = logp - rng.choice(DELTAS, (b, t))
    ref = logp - rng.integers(-40, 41, (b, t)) / GRID
    rewards = draw(S.float_arrays((b,), styles=("normal", "ties", "constant", "uniform"),
                                  scales=(1.0, 0.1, 4.0)))
    style = draw(st.sampled_from(("prefix", "ones", "random")))
    if style == "prefix":
        lengths = rng.integers(0, t + 1, b)
        mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
    else:
        mask = (rng.uniform(size=(b, t)) < (1.0 if style == "ones" else 0.6)).astype(np.int64)
    eps = draw(st.sampled_from((0.2, 0.1)))
    loss_type = draw(st.sampled_from(LOSS_TYPES))
    params = {"group_size": group_size, "epsilon": eps,
              "epsilon_high": draw(st.sampled_from((None, 0.28))),
              "beta": draw(st.sampled_from((0.04, 0.0, 1.0))),
              "scale_rewards": draw(st.booleans()), "loss_type": loss_type}
    if loss_type == "dr_grpo":
        params["max_completion_length"] = max(t, 1) + draw(st.sampled_from((0, 3)))
    return Case({"logp": logp, "old_logp": old, "ref_logp": ref, "rewards": rewards,
                 "mask": mask}, params)


def _bad(b=4, t=3, rewards_len=None, mask=None, **params):
    def build():
        m = np.ones((b, t), np.int64) if mask is None else np.asarray(mask)
        return ({"logp": np.zeros((b, t)), "old_logp": np.zeros((b, t)),
                 "ref_logp": np.zeros((b, t)), "rewards": np.zeros(rewards_len or b),
                 "mask": m}, {"group_size": 2, **params})
    return build


COMPONENT = Component(
    stem="grpo_loss",
    coverage={"loss_type": ("bnpo", "dr_grpo", "grpo"), "scale_rewards": ("True", "False"),
              "epsilon_high": ("None", "0.28"), "beta": ("0.0", "0.04", "1.0")},
    inputs=("logp", "old_logp", "ref_logp", "rewards", "mask"),
    outputs=("loss", "advantages"),
    differentiable=("logp",),
    integer_inputs=("mask",),
    wide_outputs=("loss", "advantages"),
    cases=_cases,
    errors=(
        ErrorCase("rewards of the wrong length", _bad(rewards_len=3), ValueError, r"rewards"),
        ErrorCase("group size not dividing B", _bad(b=3), ValueError, r"group_size"),
        ErrorCase("mask value 2", _bad(mask=np.full((4, 3), 2, np.int64)), ValueError, r"mask"),
        ErrorCase("unknown loss type", _bad(loss_type="dapo_v9"), ValueError, r"loss_type"),
        ErrorCase("negative beta", _bad(beta=-0.1), ValueError, r"beta"),
        ErrorCase("max_completion_length below T", _bad(loss_type="dr_grpo",
                                                        max_completion_length=2),
                  ValueError, r"max_completion_length"),
    ),
    summary="GRPO: group advantages, clipped ratio (clip-higher), k3 KL; grpo/bnpo/dr_grpo",
)
