"""Softmax reference vs finite differences, hand values at extreme scales, and torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _refcheck import FD_SETTINGS, assert_close, fd_check, max_abs, rng_case
from hypothesis import assume, given

from lmspec.reference import softmax, softmax_vjp
from lmspec.spec import component

# Logits beyond this make a 1e-5 step meaningless next to the float64 spacing of the logits;
# those scales are checked by hand below (saturated one-hot, zero gradient).
FD_MAX_LOGIT = 1e3


@FD_SETTINGS
@given(component("softmax").cases())
def test_vjp_matches_finite_differences(case):
    assume(max_abs(case.arrays["x"]) <= FD_MAX_LOGIT)
    fd_check("softmax", case, {"x": 1e-5})


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_vjp_edge_cases(axis):
    fd_check("softmax", rng_case({"x": (3, 4)}, {"axis": axis}, scale=5.0), {"x": 1e-5})


def test_hand_values():
    # softmax([0, ln 3]) = [1, 3] / 4
    assert_close(softmax(np.array([0.0, math.log(3.0)])), [0.25, 0.75], rtol=1e-15)
    # along axis 0
    assert_close(softmax(np.array([[0.0], [math.log(3.0)]]), axis=0), [[0.25], [0.75]])
    # shift invariance at 1e30: exp(-1e30) underflows to exactly 0, ties split evenly
    assert_close(softmax(np.array([1e30, 0.0, -1e30])), [1.0, 0.0, 0.0], atol=0)
    assert_close(softmax(np.array([1e30, 1e30])), [0.5, 0.5], atol=0)
    assert_close(softmax(np.array([-1e30, -1e30 + 2e14])), [0.0, 1.0], atol=0)
    # empty axis -> empty output; a size-1 axis -> 1
    assert softmax(np.zeros((2, 0))).shape == (2, 0)
    assert_close(softmax(np.array([[-7.0], [3e30]])), [[1.0], [1.0]], atol=0)


def test_hand_gradient():
    # y = [1/4, 3/4], dy = [1, 0]: dx = y * (dy - y . dy) = [1/4 * 3/4, 3/4 * -1/4]
    g = softmax_vjp(np.array([1.0, 0.0]), np.array([0.0, math.log(3.0)]))["x"]
    assert_close(g, [3 / 16, -3 / 16], rtol=1e-14)
    # saturated at 1e30: the Jacobian is exactly zero, never NaN
    g = softmax_vjp(np.array([1.0, 2.0]), np.array([1e30, -1e30]))["x"]
    assert_close(g, [0.0, 0.0], atol=0)


def test_against_torch_functional():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((3, 5, 7)) * 4, rng.standard_normal((3, 5, 7))
    for axis in (0, 1, -1):
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.softmax(xt, dim=axis)
        yt.backward(torch.tensor(dy))
        assert_close(softmax(x, axis=axis), yt.detach().numpy(), rtol=1e-13, atol=1e-16)
        assert_close(softmax_vjp(dy, x, axis=axis)["x"], xt.grad.numpy(), rtol=1e-11, atol=1e-15)
