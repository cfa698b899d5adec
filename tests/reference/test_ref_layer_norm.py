"""LayerNorm reference (Ba et al., 2016) vs finite differences, hand values and torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _refcheck import FD_SETTINGS, assert_close, fd_check, rng_case
from hypothesis import given

from lmspec.reference import layer_norm, layer_norm_vjp
from lmspec.spec import component


def _steps(case) -> dict[str, float]:
    # curvature scale of (x - mu) / sqrt(var + eps): the smallest row's sqrt(var + eps)
    x, eps = case.arrays["x"], case.params["eps"]
    var = np.var(x, axis=-1) + eps if x.size else np.array([1.0])
    return {"x": 1e-6 * min(1.0, math.sqrt(float(var.min()))), "weight": 1.0, "bias": 1.0}


@FD_SETTINGS
@given(component("layer_norm").cases())
def test_vjp_matches_finite_differences(case):
    fd_check("layer_norm", case, _steps(case))


@pytest.mark.parametrize("offset", [0.0, 1.0])
@pytest.mark.parametrize("scale", [1.0, 1e-4])
def test_vjp_edge_cases(offset, scale):
    case = rng_case(
        {"x": (2, 3, 6), "weight": (6,), "bias": (6,)},
        {"eps": 1e-5, "weight_offset": offset},
        scale=scale,
    )
    fd_check("layer_norm", case, _steps(case))


def test_hand_values():
    # x = [1, 2, 3]: mu = 2, var = 2/3, y = [-1, 0, 1] / sqrt(2/3) = [-sqrt(1.5), 0, sqrt(1.5)]
    y = layer_norm(np.array([1.0, 2.0, 3.0]), eps=1e-300)
    assert_close(y, [-math.sqrt(1.5), 0.0, math.sqrt(1.5)], rtol=1e-15, atol=1e-15)
    # eps inside the root: [0, 2] has var 1; eps 3 -> [-1, 1] / sqrt(4) = [-0.5, 0.5]
    assert_close(layer_norm(np.array([0.0, 2.0]), eps=3.0), [-0.5, 0.5], rtol=1e-15)
    # a constant row normalises to 0, leaving the bias
    y = layer_norm(np.full((2, 4), 7.0), None, np.arange(4.0), eps=1e-5)
    assert_close(y, np.broadcast_to(np.arange(4.0), (2, 4)), atol=1e-12)
    # weight offset 1 with weight [0, 1] scales by [1, 2]; bias [10, 20]
    y = layer_norm(
        np.array([0.0, 2.0]),
        np.array([0.0, 1.0]),
        np.array([10.0, 20.0]),
        eps=3.0,
        weight_offset=1.0,
    )
    assert_close(y, [9.5, 21.0], rtol=1e-15)


def test_hand_gradient():
    # the output is invariant to shifting x, so the x-gradient sums to zero on every row;
    # bias gradient = sum of dy over rows; weight gradient = sum of dy * xhat
    x, dy = np.array([[0.0, 2.0], [1.0, 1.0]]), np.array([[1.0, 2.0], [3.0, 5.0]])
    g = layer_norm_vjp(dy, x, np.zeros(2), np.zeros(2), eps=3.0, weight_offset=1.0)
    assert_close(g["x"].sum(axis=-1), [0.0, 0.0], atol=1e-15)
    assert_close(g["bias"], [4.0, 7.0])
    assert_close(g["weight"], [-0.5 * 1 + 0 * 3, 0.5 * 2 + 0 * 5])


def test_against_torch_functional():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((4, 3, 13)) * 3 + 1, rng.standard_normal((4, 3, 13))
    w, b = rng.standard_normal(13), rng.standard_normal(13)
    ts = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    yt = torch.nn.functional.layer_norm(ts[0], (13,), ts[1], ts[2], eps=1e-5)
    yt.backward(torch.tensor(dy))
    assert_close(layer_norm(x, w, b, eps=1e-5), yt.detach().numpy(), rtol=1e-13, atol=1e-13)
    g = layer_norm_vjp(dy, x, w, b, eps=1e-5)
    for name, t in zip(("x", "weight", "bias"), ts):
        assert_close(g[name], t.grad.numpy(), rtol=1e-11, atol=1e-12, what=name)
