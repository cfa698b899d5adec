"""Conformance of awq: the chosen scales s, then the codes of w * s exactly, their scales under
the float policy and zero points exactly (a different grid point only where the losses tie
within LOSS_MARGIN: the knife edge); error inputs; properties: n_grid = 1 is RTN (alpha = 0
gives s = 1), and the result's output error on its calibration data is no worse than RTN's
(alpha = 0 is on the grid, and the search keeps the smallest loss)."""

from __future__ import annotations

import numpy as np
from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.conformance import _quant as Q
from lmspec.reference.awq import awq as awq_ref
from lmspec.reference.awq import awq_losses, candidate_scales, fake_quant
from lmspec.reference.quant_int4 import rtn_int4_codes
from lmspec.spec import Case
from lmspec.spec.awq import COMPONENT, LOSS_MARGIN

STEM = COMPONENT.stem


def _grid_point(target, case, arrays, s) -> np.ndarray:
    """The reference's s, or (knife edge) the grid point the backend chose if its loss ties the
    best within LOSS_MARGIN; fails otherwise."""
    p = case.params
    ref_s = awq_ref(arrays["w"], arrays["x"], **p)[3]
    if np.array_equal(s, ref_s):
        return ref_s
    losses = awq_losses(arrays["w"], arrays["x"], **p)
    for t in range(p["n_grid"]):
        if np.array_equal(s, candidate_scales(arrays["x"], t / p["n_grid"])):
            if losses[t] <= losses.min() * (1 + LOSS_MARGIN):
                return s
            check.fail(f"s is grid point alpha = {t / p['n_grid']:g} (loss {losses[t]!r}); the "
                       f"reference's best is alpha = {int(np.argmin(losses)) / p['n_grid']:g} "
                       f"(loss {losses.min()!r}): not a tie within {LOSS_MARGIN:g}", target,
                       STEM, "forward", "s", case)
    check.fail("s is none of the grid's candidate scales", target, STEM, "forward", "s", case)
    return ref_s


def check_awq(target, case: Case):
    got = Q.outputs(target, STEM, case)
    if got is None:
        return None
    arrays, (q, scales, zeros, s) = got
    out, n_in = arrays["w"].shape
    n_groups = n_in // case.params["group_size"]
    for name, g, shape, dtype in zip(COMPONENT.outputs, (q, scales, zeros, s), [
            (out, n_in), (out, n_groups), (out, n_groups), (n_in,)],
            (np.uint8, np.float32, np.uint8, np.float32), strict=True):
        Q.expect_layout(target, STEM, case, name, g, shape, dtype)
    s_used = _grid_point(target, case, arrays, s)
    rq, rs, rz, _ = fake_quant(arrays["w"], s_used, case.params["group_size"])
    Q.check_float(target, STEM, case, "scales", scales, rs)
    Q.check_equal(target, STEM, case, "zeros", zeros, rz, "forward", "zero points of w * s")
    Q.check_equal(target, STEM, case, "q", q, rq, "forward", "RTN codes of w * s")
    return arrays, (q, scales, zeros, s)


@given(case=COMPONENT.cases())
def test_forward(target, case):
    check_awq(target, case)


def test_errors(target):
    check.check_errors(target, STEM)


@given(case=COMPONENT.cases())
def test_one_grid_point_is_rtn(target, case):
    """n_grid = 1 searches alpha = 0 only: s = 1 and the codes are quant_int4's RTN of w."""
    case = Case(case.arrays, dict(case.params, n_grid=1))
    got = Q.outputs(target, STEM, case, "property")
    if got is None:
        return
    arrays, (q, scales, zeros, s) = got
    rq, rs, rz = rtn_int4_codes(arrays["w"], case.params["group_size"])
    Q.check_equal(target, STEM, case, "s", s, np.ones_like(s), "property-rtn", "s = 1")
    Q.check_equal(target, STEM, case, "q", q, rq, "property-rtn", "codes = RTN codes")
    Q.check_equal(target, STEM, case, "zeros", zeros, rz, "property-rtn", "zeros = RTN's")
    Q.check_float(target, STEM, case, "scales", scales, rs, "property-rtn")


@given(case=COMPONENT.cases())
def test_no_worse_than_rtn(target, case):
    """The layer with the scales folded into its input, ``(x / s) @ dequant(q)^T``, is no
    further from ``x @ w^T`` on the calibration inputs than RTN's: alpha = 0 is on the grid."""
    got = Q.outputs(target, STEM, case, "property")
    if got is None:
        return
    arrays, (q, scales, zeros, s) = got
    w, x, gs = arrays["w"], arrays["x"], case.params["group_size"]
    g = np.arange(w.shape[1]) // gs
    deq = (q - zeros[:, g].astype(np.float64)) * scales[:, g].astype(np.float64)
    err = np.mean((x @ w.T - (x / np.asarray(s, np.float64)) @ deq.T) ** 2)
    rtn = awq_losses(w, x, group_size=gs, n_grid=1)[0]
    if not err <= rtn * (1 + LOSS_MARGIN):
        check.fail(f"output error {err!r} > RTN's {rtn!r}: the search must keep alpha = 0 "
                   f"unless a grid point beats it (are the scales folded back as x / s?)",
                   target, STEM, "property-no_worse_than_rtn", "q", case)

