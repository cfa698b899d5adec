"""Conformance of gptq: codes exactly (the knife-edge rule, in processing order), scales under
the float policy, zero points and the permutation exactly; error inputs; properties: act-order
on inputs whose diag(H) is already descending equals act-order off (the permutation is undone);
one group of the whole row is the same with static groups or not."""

from __future__ import annotations

import numpy as np
from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.conformance import _quant as Q
from lmspec.reference.gptq import gptq_trace, hessian
from lmspec.spec import Case
from lmspec.spec.gptq import COMPONENT, FLOAT64_MARGIN

STEM = COMPONENT.stem


def _layout(target, case, got, out: int, n_in: int, n_groups: int) -> None:
    for name, g, shape, dtype in zip(COMPONENT.outputs, got, [
            (out, n_in), (out, n_groups), (out, n_groups), (n_in,)],
            (np.uint8, np.float32, np.uint8, np.int64), strict=True):
        Q.expect_layout(target, STEM, case, name, g, shape, dtype)


def knife_edge_stop(target, case, q, ref_q, quot, perm) -> int:
    """The first column, in processing order, where the codes differ (n_in if none); it must
    be a knife edge: every differing code there had its reference quotient within the margin
    of a rounding boundary. Later columns saw different error feedback: not compared."""
    order = np.asarray(perm)
    qp, rp, yp = q[:, order], ref_q[:, order], quot[:, order]
    differ = np.flatnonzero((qp != rp).any(axis=0))
    if differ.size == 0:
        return q.shape[1]
    c = int(differ[0])
    rows = np.flatnonzero(qp[:, c] != rp[:, c])
    y = yp[rows, c]
    gap = np.abs(np.abs(y - np.floor(y)) - 0.5)  # distance to the nearest .5 boundary
    edge = gap <= FLOAT64_MARGIN * np.maximum(1.0, np.abs(y))
    if not edge.all():
        r = int(rows[np.argmin(edge)])
        check.fail(f"codes differ at processing step {c} (column {int(order[c])}), row {r}: "
                   f"got {int(qp[r, c])}, reference {int(rp[r, c])}; the reference quotient "
                   f"v / scale there is {yp[r, c]!r}, not within {FLOAT64_MARGIN:g} of a "
                   f"rounding boundary (no knife edge)", target, STEM, "forward", "q", case)
    return c


def check_gptq(target, case: Case) -> tuple | None:
    got = Q.outputs(target, STEM, case)
    if got is None:
        return None
    arrays, outs = got
    p = case.params
    out, n_in = arrays["w"].shape
    n_groups = n_in // p["group_size"]
    _layout(target, case, outs, out, n_in, n_groups)
    q, scales, zeros, perm = outs
    rq, rs, rz, rperm, quot = gptq_trace(arrays["w"], arrays["x"], **p)
    # diag(H) ties are exact ties (equal columns sum identically): the order is exact
    Q.check_equal(target, STEM, case, "perm", perm, rperm, "forward",
                  "perm = stable argsort of -diag(H)")
    stop = knife_edge_stop(target, case, q, rq, quot, rperm)
    # groups formed before the knife edge (all of them when static) are comparable
    formed = n_groups if p["static_groups"] else min(n_groups, stop // p["group_size"] + 1)
    Q.check_float(target, STEM, case, "scales", scales[:, :formed], rs[:, :formed])
    Q.check_equal(target, STEM, case, "zeros", zeros[:, :formed], rz[:, :formed], "forward",
                  "zero points equal the reference's")
    return outs


@given(case=COMPONENT.cases())
def test_forward(target, case):
    check_gptq(target, case)


def test_errors(target):
    check.check_errors(target, STEM)



def _diag(x) -> np.ndarray:
    """diag(H) as the reference computes it (dead inputs count 1)."""
    d = np.diag(hessian(x))
    return np.where(d == 0, 1.0, d)


def _descending_diag(arrays: dict, dtype) -> dict | None:
    """Columns of w and x reordered so that diag(H) is descending, each live column then
    scaled by 1 + (rank from the end) / 16 so that consecutive values differ by far more than
    any backend's rounding of H (equal columns would otherwise tie, and BLAS may round the
    same dot product differently at different positions); None where the reference's own
    order is still not the identity after that (a live column crossing a dead one)."""
    x = np.asarray(arrays["x"], np.float64)
    order = np.argsort(-_diag(x), kind="stable")
    w, x = arrays["w"][:, order], x[:, order]
    n = x.shape[1]
    x = (x * (1.0 + np.arange(n, 0, -1) / 16.0)).astype(dtype).astype(np.float64)
    if not np.array_equal(np.argsort(-_diag(x), kind="stable"), np.arange(n)):
        return None
    return {"w": w, "x": x}


@given(case=COMPONENT.cases())
def test_act_order_permutation_round_trips(target, case):
    """On inputs whose diag(H) is already descending, act-order's permutation is the identity,
    so act_order=True must return exactly what act_order=False returns: the codes come back
    in the original column order and every group is where it was."""
    check.require_impl(target, STEM)
    arrays = _descending_diag(check.rounded(case, STEM, target.np_dtype), target.np_dtype)
    if arrays is None:
        return
    on = Q.outputs(target, STEM, Case(arrays, dict(case.params, act_order=True)), "property")
    off = Q.outputs(target, STEM, Case(arrays, dict(case.params, act_order=False)), "property")
    if on is None or off is None:
        return
    n_in = arrays["w"].shape[1]
    Q.check_equal(target, STEM, case, "perm", on[1][3], np.arange(n_in),
                  "property-act_order", "diag(H) already descending: perm is the identity")
    for name, a, b in zip(COMPONENT.outputs, on[1], off[1], strict=True):
        Q.check_equal(target, STEM, case, name, a, b, "property-act_order",
                      "act_order with an identity permutation equals act_order off")


@given(case=COMPONENT.cases())
def test_one_group_static_or_not(target, case):
    """group_size == in (per-channel): the row's one scale is computed from the whole weight
    before any column is quantized either way, so static_groups changes nothing."""
    check.require_impl(target, STEM)
    n_in = case.arrays["w"].shape[1]
    params = dict(case.params, group_size=n_in, act_order=False)
    a = Q.outputs(target, STEM, Case(case.arrays, dict(params, static_groups=True)), "property")
    b = Q.outputs(target, STEM, Case(case.arrays, dict(params, static_groups=False)), "property")
    if a is None or b is None:
        return
    for name, x, y in zip(COMPONENT.outputs, a[1], b[1], strict=True):
        Q.check_equal(target, STEM, case, name, x, y, "property-per_channel",
                      "one group per row: static_groups on equals off")
