"""AWQ (Lin et al., 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration"): per-input-channel scales from activation magnitudes, searched on a grid, then
INT4 round-to-nearest of the scaled weight, as llm-awq's / AutoAWQ's ``search_best_scale``.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec._contract import Case, Component, ErrorCase, require
from lmspec.spec.gptq import calibration_arrays, check_calibration

# Knife edge of the search: two grid points whose float64 losses differ by less than
# LOSS_MARGIN relative may be ordered either way by an implementation that sums differently;
# there either choice is accepted (and its codes are checked on its own s).
LOSS_MARGIN = 1e-9


def awq(w, x, *, group_size: int = 128, n_grid: int = 20):
    """Quantize a linear layer's weight to 4 bits with activation-aware scales; returns
    ``(q, scales, zeros, s)``.

    Shapes: ``w`` (out, in) float, ``x`` (n, in) float calibration inputs (n >= 1). Outputs:
    ``q`` (out, in) uint8 codes in 0..15 (unpacked) of ``w * s`` (column j scaled by s[j]);
    ``scales`` and ``zeros`` (out, in // group_size), float32 and uint8, quant_int4's grid of
    ``w * s`` (contiguous groups); ``s`` (in,) float32, the per-input-channel scales.

    Using the result: the layer computes ``y = (x / s) @ dequant(q, scales, zeros)^T``; the
    division by s is FOLDED INTO THE PRECEDING OPERATOR (the RMSNorm weight, or the previous
    linear layer's output rows, are divided by s), so that the quantized layer itself is a
    plain INT4 matmul (lmspec.spec.quant_matmul).

    Search (all in float64; s rounded to float32 before it is used, so that the returned s is
    exactly the one the codes were made with):

        x_mean[j] = mean_i |x[i, j]|                          (AutoAWQ's x_mean)
        for t in 0 .. n_grid - 1:  alpha = t / n_grid         (the grid [0, 1), n_grid points)
            s = max(x_mean ** alpha, 1e-4)                    (0 ** 0 = 1)
            s = fl32(s / sqrt(max(s) * min(s)))
            W_hat = dequant(rtn_int4(w * s)) / s              (quant_int4's grid, group-wise)
            loss = mean((x @ w^T - x @ W_hat^T) ** 2)         (over the n x out outputs)
        keep the first alpha of smallest loss (strictly smaller replaces: AutoAWQ's tie rule).

    ``n_grid == 1`` searches alpha = 0 only: s = 1 and the result is quant_int4's RTN.

    Choices (AutoAWQ has more knobs): the scales are llm-awq's ``x_mean ** alpha`` (AutoAWQ's
    default ``duo_scaling=True`` divides by ``w_mean ** (1 - alpha)``, with w_mean the mean
    of |w| / max|w| per group, which makes alpha = 0 differ from RTN: not specified here); the
    loss is that of this one linear layer (AutoAWQ evaluates the whole block the scales feed,
    e.g. q/k/v together); the clipping search (``auto_clip``, which shrinks each group's
    range) is left out: the grid is plain RTN.

    Not differentiable (integer codes).

    Rejected (ValueError naming the argument; TypeError for integer arrays): w or x not 2-D
    or not float; x's width not in; n == 0; ``group_size`` not dividing in; ``n_grid`` < 1.
    """
    check_args(w, x, group_size=group_size, n_grid=n_grid)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(w, x, *, group_size: int = 128, n_grid: int = 20) -> None:
    check_calibration(w, x, group_size)
    require(isinstance(n_grid, (int, np.integer)) and n_grid >= 1, ValueError,
            f"n_grid: expected an integer >= 1, got {n_grid!r}")


@st.composite
def awq_cases(draw) -> Case:
    arrays, group_size = draw(calibration_arrays())
    return Case(arrays, {"group_size": group_size, "n_grid": draw(st.sampled_from((20, 1)))})


def _layer(n=4, **params):
    def build():
        return {"w": np.ones((3, 8)), "x": np.ones((n, 8))}, {"group_size": 4, **params}
    return build


def _mismatched():
    return {"w": np.ones((3, 8)), "x": np.ones((4, 6))}, {"group_size": 4}


COMPONENT = Component(
    stem="awq",
    inputs=("w", "x"),
    outputs=("q", "scales", "zeros", "s"),
    cases=awq_cases,
    errors=(
        ErrorCase("x of another width", _mismatched, ValueError, r"x"),
        ErrorCase("no calibration rows", _layer(n=0), ValueError, r"x"),
        ErrorCase("group size not dividing in", _layer(group_size=3), ValueError,
                  r"group_size"),
        ErrorCase("empty grid", _layer(n_grid=0), ValueError, r"n_grid"),
    ),
    summary="AWQ int4: activation-aware per-channel scales, grid over the exponent, RTN",
)
