"""Log-softmax reference vs finite differences, hand values at 1e30 scale, and torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _refcheck import FD_SETTINGS, assert_close, fd_check, max_abs, rng_case
from hypothesis import assume, given

from lmspec.reference import log_softmax, log_softmax_vjp
from lmspec.spec import component

FD_MAX_LOGIT = 1e3  # see test_ref_softmax: larger logits are checked by hand


@FD_SETTINGS
@given(component("log_softmax").cases())
def test_vjp_matches_finite_differences(case):
    assume(max_abs(case.arrays["x"]) <= FD_MAX_LOGIT)
    fd_check("log_softmax", case, {"x": 1e-5})


@pytest.mark.parametrize("axis", [0, -1])
def test_vjp_edge_cases(axis):
    fd_check("log_softmax", rng_case({"x": (4, 3)}, {"axis": axis}, scale=20.0), {"x": 1e-5})


def test_hand_values():
    # log_softmax([0, ln 3]) = [ln 1/4, ln 3/4]
    y = log_softmax(np.array([0.0, math.log(3.0)]))
    assert_close(y, [math.log(0.25), math.log(0.75)], rtol=1e-15)
    # at 1e30 the answer is finite: [1e30, 0] -> [0 - log(1 + e^-1e30), -1e30] = [0, -1e30]
    # (log(softmax) would give -inf in the second slot)
    y = log_softmax(np.array([1e30, 0.0]))
    assert np.all(np.isfinite(y))
    assert_close(y, [0.0, -1e30], rtol=1e-15, atol=0)
    # ties at 1e30: [1e30, 1e30] -> [-ln 2, -ln 2]
    assert_close(log_softmax(np.array([1e30, 1e30])), [-math.log(2)] * 2, rtol=1e-15)
    assert log_softmax(np.zeros((0, 3))).shape == (0, 3)


def test_hand_gradient():
    # dx = dy - softmax(x) * sum(dy): x = [0, ln 3], dy = [1, 1] -> [1 - 1/2, 1 - 3/2]
    g = log_softmax_vjp(np.array([1.0, 1.0]), np.array([0.0, math.log(3.0)]))["x"]
    assert_close(g, [0.5, -0.5], rtol=1e-15)
    # saturated: softmax = [1, 0] exactly, so dx = dy - [sum(dy), 0]
    g = log_softmax_vjp(np.array([2.0, 5.0]), np.array([1e30, 0.0]))["x"]
    assert_close(g, [-5.0, 5.0], atol=0)


def test_against_torch_functional():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x, dy = rng.standard_normal((6, 9)) * 10, rng.standard_normal((6, 9))
    for axis in (0, -1):
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.log_softmax(xt, dim=axis)
        yt.backward(torch.tensor(dy))
        assert_close(log_softmax(x, axis=axis), yt.detach().numpy(), rtol=1e-14, atol=1e-13)
        assert_close(
            log_softmax_vjp(dy, x, axis=axis)["x"], xt.grad.numpy(), rtol=1e-12, atol=1e-13
        )
    xt = torch.tensor([1e30, 0.0], dtype=torch.float64)
    assert_close(log_softmax(xt.numpy()), torch.log_softmax(xt, -1).numpy(), atol=0)
