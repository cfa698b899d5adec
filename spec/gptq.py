"""GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers"): INT4 weights by column-wise rounding with second-order error feedback,
as AutoGPTQ's / GPTQModel's ``fasterquant``.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, require
from lmspec.spec._quant import check_float_array

# Knife edge of a float64 algorithm: where the reference's quotient v / scale lies within
# FLOAT64_MARGIN * max(1, |v / scale|) of a rounding boundary, a float64 implementation that
# orders its sums differently (BLAS, an eager instead of a lazy update) may round the other
# way; there either code is accepted, and the codes after it (the error feedback differs)
# are not compared. Float64 rounding of the column updates is ~in * cond(H) * 2**-53 relative,
# far below 1e-9 on the conformance domain; a genuine bug moves a quotient by O(1).
FLOAT64_MARGIN = 1e-9


def gptq(w, x, *, group_size: int = 128, damp: float = 0.01, block_size: int = 128,
         act_order: bool = False, static_groups: bool = False):
    """Quantize a linear layer's weight to 4 bits on calibration inputs; returns
    ``(q, scales, zeros, perm)``.

    Shapes: ``w`` (out, in) float (``nn.Linear.weight``), ``x`` (n, in) float calibration
    inputs of the layer (n >= 1). Outputs: ``q`` (out, in) uint8 codes in 0..15, UNPACKED and
    in the ORIGINAL column order (``lmspec.reference.pack_int4`` packs them); ``scales``
    (out, in // group_size) float32; ``zeros`` (out, in // group_size) uint8; ``perm`` (in,)
    int64, the order in which columns were quantized (identity without ``act_order``).

    The grid is quant_int4's (GPTQ's own quantizer): per group of columns,
    ``lo = min(min w, 0)``, ``hi = max(max w, 0)``, ``scale = fl32((hi - lo) / 15)`` (all-zero
    group: lo = -1, scale = fl32(2 / 15)), ``zero = clip(rne(-lo / scale), 0, 15)``; a value
    ``v`` gets ``q = clip(rne(v / scale) + zero, 0, 15)`` and dequantizes to
    ``(q - zero) * scale``.

    Algorithm (all in float64; the reference and our backends compute in float64 whatever the
    input dtype, so codes compare exactly across implementations except at knife edges):

    1. ``H = 2 / n * x^T x`` (in, in): the Hessian of ``||x w^T - x v^T||^2 / n`` in v, as
       AutoGPTQ's running ``H += 2 / nsamples * inp inp^T``.
    2. Dead columns (``H[i, i] == 0``: an input that is always 0): ``H[i, i] = 1``,
       ``w[:, i] = 0``.
    3. ``static_groups``: every group's scale and zero are computed now, from the columns
       ``[g * group_size, (g + 1) * group_size)`` of this w, in the original order.
    4. ``act_order``: columns are processed in the order ``perm`` = descending ``diag(H)``,
       ties by ascending column index (a STABLE sort; AutoGPTQ's ``torch.argsort`` leaves tie
       order unspecified); w and H are permuted accordingly.
    5. Damping: ``H += damp * mean(diag(H)) * I`` (``percdamp``).
    6. ``U`` = the upper Cholesky factor of ``H^-1`` (``H^-1 = U^T U``; AutoGPTQ: cholesky,
       cholesky_inverse, cholesky(upper=True)).
    7. Columns in blocks of ``block_size`` (lazy batch updates). Within a block, for each
       column i (in processing order) with ``d = U[i, i]``:
       - group parameters: without ``static_groups``, when i is the first column of a group
         (``i % group_size == 0``, in processing order: with ``act_order`` a group is
         ``group_size`` consecutive columns of the PERMUTED order), scale and zero are
         computed from columns ``i .. i + group_size - 1`` of w AS IT STOOD AT THE START OF
         THE CURRENT BLOCK (the updates from earlier columns of the same block are not yet
         written back: AutoGPTQ's and GPTQModel's behaviour; it matters only when a group
         starts inside a block). With ``static_groups`` column i uses the group of its
         original index.
       - ``q_i`` = the codes of the (updated) column; ``e = (w_i - dequant(q_i)) / d``;
         the remaining columns of the block get ``w_j -= e * U[i, j]``.
       After the block, the columns after it get ``w[:, later] -= E @ U[block, later]`` (E the
       block's e columns).
    8. Codes are returned in the original column order (``q[:, perm] = q_processed``).

    Groups: ``scales[:, g]`` / ``zeros[:, g]`` belong to the g-th group in the order the
    groups were formed. Column j of the returned ``q`` belongs to group ``j // group_size``,
    except with ``act_order`` and not ``static_groups``, where it is ``inv(perm)[j] //
    group_size`` (GPTQ's ``g_idx``; such a layout needs a g_idx-aware kernel, which is why
    ``static_groups`` exists). ``group_size == in`` is per-channel.

    Not differentiable (integer codes).

    Rejected (ValueError naming the argument; TypeError for integer arrays): w or x not 2-D
    or not float; x's width not in; n == 0; ``group_size`` not dividing in; ``block_size`` <
    1; ``damp`` < 0 or not finite.
    """
    check_args(w, x, group_size=group_size, damp=damp, block_size=block_size,
               act_order=act_order, static_groups=static_groups)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(w, x, *, group_size: int = 128, damp: float = 0.01, block_size: int = 128,
               act_order: bool = False, static_groups: bool = False) -> None:
    check_calibration(w, x, group_size)
    require(isinstance(block_size, (int, np.integer)) and block_size >= 1, ValueError,
            f"block_size: expected an integer >= 1, got {block_size!r}")
    require(np.isfinite(damp) and damp >= 0, ValueError,
            f"damp: expected a finite value >= 0, got {damp!r}")


def check_calibration(w, x, group_size: int) -> None:
    """The checks gptq and awq share: (out, in) weight, (n, in) inputs, groups dividing in."""
    ws = check_float_array("w", w, 2)
    xs = check_float_array("x", x, 2)
    require(len(ws) == 2, ValueError, f"w: expected shape (out, in), got {ws}")
    require(len(xs) == 2 and xs[1] == ws[1], ValueError,
            f"x: expected calibration inputs (n, {ws[1]}), got {xs}")
    require(xs[0] >= 1, ValueError, "x: expected at least one calibration row, got n = 0")
    require(isinstance(group_size, (int, np.integer)) and group_size >= 1
            and ws[1] % group_size == 0, ValueError,
            f"group_size: expected a divisor of in = {ws[1]}, got {group_size!r}")


@st.composite
def calibration_arrays(draw) -> tuple[dict, int]:
    """A small layer: w (out, in) and x (n, in), in = group_size * groups; some inputs may
    be dead (an always-zero column of x). Few distinct shapes: a jitted backend compiles once
    per shape."""
    group_size = draw(st.sampled_from((2, 4)))
    n_in = group_size * draw(st.sampled_from((1, 3)))
    out = draw(S.sizes((1, 3), min_size=1))
    n = draw(S.sizes((1, 3, 16), min_size=1))
    w = draw(S.float_arrays((out, n_in), styles=("normal", "uniform", "outliers", "ties"),
                            scales=(0.01, 1.0, 30.0)))
    x = draw(S.float_arrays((n, n_in), styles=("normal", "uniform", "outliers", "ties"),
                            scales=(0.1, 1.0, 4.0)))
    if n_in > 1 and draw(st.booleans()):
        x[:, draw(st.integers(0, n_in - 1))] = 0.0  # a dead input
    return {"w": w, "x": x}, group_size


@st.composite
def gptq_cases(draw) -> Case:
    arrays, group_size = draw(calibration_arrays())
    return Case(arrays, {
        "group_size": group_size,
        "damp": draw(st.sampled_from((0.01, 0.1))),
        "block_size": draw(st.sampled_from((128, 2, 3, 4))),
        "act_order": draw(st.booleans()),
        "static_groups": draw(st.booleans()),
    })


def _layer(n=4, n_in=8, out=3, **params):
    def build():
        return {"w": np.ones((out, n_in)), "x": np.ones((n, n_in))}, {
            "group_size": 4, **params}
    return build


def _mismatched():
    return {"w": np.ones((3, 8)), "x": np.ones((4, 6))}, {"group_size": 4}


def _int_weight():
    return {"w": np.ones((3, 8), np.int64), "x": np.ones((4, 8))}, {"group_size": 4}


COMPONENT = Component(
    stem="gptq",
    coverage={"act_order": ("True", "False"), "static_groups": ("True", "False")},
    inputs=("w", "x"),
    outputs=("q", "scales", "zeros", "perm"),
    cases=gptq_cases,
    errors=(
        ErrorCase("x of another width", _mismatched, ValueError, r"x"),
        ErrorCase("no calibration rows", _layer(n=0), ValueError, r"x"),
        ErrorCase("group size not dividing in", _layer(group_size=3), ValueError,
                  r"group_size"),
        ErrorCase("block size 0", _layer(block_size=0), ValueError, r"block_size"),
        ErrorCase("negative damping", _layer(damp=-0.1), ValueError, r"damp"),
        ErrorCase("integer weight", _int_weight, TypeError, r"w"),
    ),
    summary="GPTQ int4: damped Hessian, Cholesky of its inverse, lazy blocks, act-order",
)

