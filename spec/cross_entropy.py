"""Cross-entropy over logits: mean over non-ignored targets, label smoothing, z-loss (PaLM)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, is_integer_array, require, shape_of

IGNORE_INDEX = -100


def cross_entropy(logits, targets, *, ignore_index: int = IGNORE_INDEX,
                  label_smoothing: float = 0.0, z_loss: float = 0.0):
    """Scalar loss over the positions whose target is not ``ignore_index``.

    Shapes: ``logits`` (..., V) with V >= 1; ``targets`` (...) integer. Output: a 0-d float
    (float32 or wider; float64 in the reference).

    Math, per valid position i (``n`` = number of valid positions, ``lse_i`` =
    logsumexp of the row, ``eps`` = ``label_smoothing``, ``z`` = ``z_loss``)::

        nll_i    = lse_i - logits[i, t_i]
        smooth_i = lse_i - mean_c logits[i, c]          # -mean_c log p_ic
        loss     = sum_i [(1 - eps) nll_i + eps smooth_i + z lse_i**2] / max(n, 1)

    This is torch.nn.functional.cross_entropy's label smoothing, plus PaLM's z-loss
    (``z = 1e-4`` there). When every target is ignored the loss is 0 with zero gradient
    (torch returns NaN there: the spec chooses 0, so a fully masked micro-batch is harmless).
    Ignored positions contribute nothing to the loss, the count or the gradient.

    Gradient (with respect to ``logits``): for valid rows
    ``((1 - eps) (p - onehot(t)) + eps (p - 1/V) + 2 z lse p) / max(n, 1)``; zero elsewhere.

    Rejected: ``targets`` not integer (TypeError) or of the wrong shape (ValueError); a
    target outside [0, V) that is not ``ignore_index`` (IndexError naming ``targets``);
    ``label_smoothing`` outside [0, 1]; ``z_loss < 0`` (ValueError).
    """
    check_args(logits, targets, ignore_index=ignore_index, label_smoothing=label_smoothing,
               z_loss=z_loss)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(logits, targets, *, ignore_index: int = IGNORE_INDEX,
               label_smoothing: float = 0.0, z_loss: float = 0.0) -> None:
    ls, ts = shape_of(logits), shape_of(targets)
    require(len(ls) >= 1 and ls[-1] >= 1, ValueError,
            f"logits: expected shape (..., V) with V >= 1, got {ls}")
    require(ts == ls[:-1], ValueError, f"targets: expected shape {ls[:-1]}, got {ts}")
    require(is_integer_array(targets), TypeError,
            f"targets: expected an integer array, got dtype {targets.dtype}")
    require(0.0 <= label_smoothing <= 1.0, ValueError,
            f"label_smoothing: expected a value in [0, 1], got {label_smoothing}")
    require(z_loss >= 0.0, ValueError, f"z_loss: expected >= 0, got {z_loss}")


def check_targets(targets_np: np.ndarray, vocab: int, ignore_index: int) -> None:
    """Value check on host targets, shared so that every backend rejects the same inputs."""
    valid = targets_np[targets_np != ignore_index]
    if valid.size:
        lo, hi = int(valid.min()), int(valid.max())
        require(lo >= 0 and hi < vocab, IndexError,
                f"targets: expected values in [0, {vocab}) or ignore_index={ignore_index}, "
                f"got values in [{lo}, {hi}]")


@st.composite
def _cases(draw) -> Case:
    lead = draw(S.leading_shapes())
    v = draw(S.sizes((1, 2, 5, 16, 33, 64), min_size=1))
    logits = draw(S.float_arrays(lead + (v,), scales=(0.1, 1.0, 10.0, 1e4)))
    targets = draw(S.int_arrays(lead, 0, v))
    ignore = draw(st.sampled_from((IGNORE_INDEX, -1, 0)))
    if targets.size and draw(st.booleans()):
        rng = np.random.default_rng(draw(S.seeds()))
        frac = draw(st.sampled_from((0.3, 1.0)))
        targets = np.where(rng.uniform(size=targets.shape) < frac, ignore, targets)
    return Case({"logits": logits, "targets": targets},
                {"ignore_index": ignore,
                 "label_smoothing": draw(st.sampled_from((0.0, 0.1, 1.0))),
                 "z_loss": draw(st.sampled_from((0.0, 1e-4, 0.1)))})


def _bad_target():
    return {"logits": np.ones((3, 4)), "targets": np.array([0, 4, -100])}, {}


def _features(case: Case) -> dict[str, str]:
    """Whether some targets are the ignore index (they drop out of the mean's count)."""
    ignored = np.any(case.arrays["targets"] == case.params["ignore_index"])
    return {"ignored targets": "some" if ignored else "none"}


COMPONENT = Component(
    stem="cross_entropy",
    features=_features,
    coverage={"label_smoothing": ("0.0", "0.1", "1.0"), "z_loss": ("0.0", "0.0001", "0.1"),
              "ignored targets": ("some", "none")},
    inputs=("logits", "targets"),
    outputs=("loss",),
    differentiable=("logits",),
    integer_inputs=("targets",),
    wide_outputs=("loss",),
    cases=_cases,
    errors=(
        ErrorCase("target equal to V", _bad_target, IndexError, r"targets"),
        ErrorCase("targets of the wrong shape",
                  lambda: ({"logits": np.ones((3, 4)), "targets": np.zeros(2, np.int64)}, {}),
                  ValueError, r"targets"),
        ErrorCase("label smoothing above 1",
                  lambda: ({"logits": np.ones((3, 4)), "targets": np.zeros(3, np.int64)},
                           {"label_smoothing": 1.5}), ValueError, r"label_smoothing"),
    ),
    summary="cross-entropy: mean over valid targets; ignore index; smoothing; z-loss",
)
