"""SwiGLU reference (Shazeer, 2020) vs finite differences, hand values and HF LlamaMLP."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _refcheck import FD_SETTINGS, assert_close, fd_check, rng_case
from hypothesis import given

from lmspec.reference import swiglu, swiglu_vjp
from lmspec.spec import component

STEPS = {"x": 1e-6, "w_gate": 1e-6, "w_up": 1e-6, "w_down": 1e-6}


@FD_SETTINGS
@given(component("swiglu").cases())
def test_vjp_matches_finite_differences(case):
    fd_check("swiglu", case, STEPS)


def test_vjp_edge_cases():
    # empty batch, and a large negative gate (silu's tail) at 1-d input
    fd_check(
        "swiglu", rng_case({"x": (0, 4), "w_gate": (4, 3), "w_up": (4, 3), "w_down": (3, 2)}), STEPS
    )
    fd_check(
        "swiglu",
        rng_case({"x": (5,), "w_gate": (5, 2), "w_up": (5, 2), "w_down": (2, 5)}, scale=3.0),
        STEPS,
    )


def test_hand_values():
    # D = F = 1: x = 2, wg = 1, wu = 3, wd = 0.5 -> silu(2) * 6 * 0.5 = 3 * 2 / (1 + e^-2)
    y = swiglu(np.array([[2.0]]), np.array([[1.0]]), np.array([[3.0]]), np.array([[0.5]]))
    assert_close(y, [[6.0 / (1.0 + math.exp(-2.0))]], rtol=1e-15)
    # silu(-a) = silu(a) - a; x = -2, wg = 1, wu = -3: a = -2, b = 6 -> silu(-2) * 6 * 0.5
    y = swiglu(np.array([[-2.0]]), np.array([[1.0]]), np.array([[-3.0]]), np.array([[0.5]]))
    assert_close(y, [[(2.0 / (1.0 + math.exp(-2.0)) - 2.0) * 3.0]], rtol=1e-14)
    # silu at -800 is exactly -0 (no overflow in exp)
    y = swiglu(np.array([[-800.0]]), np.array([[1.0]]), np.array([[1.0]]), np.array([[1.0]]))
    assert np.isfinite(y).all() and abs(float(y[0, 0])) < 1e-300


def test_hand_gradient():
    # y = silu(a) * b with a = x wg, b = x wu (D = F = 1, wd = 1); dy/dwu = silu(a) x
    sig = 1.0 / (1.0 + math.exp(-2.0))
    g = swiglu_vjp(
        np.array([[1.0]]),
        np.array([[1.0]]),
        np.array([[2.0]]),
        np.array([[3.0]]),
        np.array([[1.0]]),
    )
    assert_close(g["w_up"], [[2.0 * sig]], rtol=1e-15)
    # dy/dwg = b * silu'(a) * x, silu'(a) = s (1 + a (1 - s))
    assert_close(g["w_gate"], [[3.0 * sig * (1 + 2.0 * (1 - sig))]], rtol=1e-15)


def test_against_hf_llama_mlp():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    mlp = LlamaMLP(
        LlamaConfig(
            hidden_size=12,
            intermediate_size=20,
            hidden_act="silu",
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).double()
    rng = np.random.default_rng(7)
    x, dy = rng.standard_normal((2, 5, 12)), rng.standard_normal((2, 5, 12))
    xt = torch.tensor(x, requires_grad=True)
    yt = mlp(xt)
    yt.backward(torch.tensor(dy))
    # nn.Linear stores (out, in): the spec's (in, out) weights are the transposes
    wg, wu, wd = (m.weight.detach().numpy().T for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    assert_close(swiglu(x, wg, wu, wd), yt.detach().numpy(), rtol=1e-12, atol=1e-14)
    g = swiglu_vjp(dy, x, wg, wu, wd)
    assert_close(g["x"], xt.grad.numpy(), rtol=1e-12, atol=1e-14)
    for name, m in (("w_gate", mlp.gate_proj), ("w_up", mlp.up_proj), ("w_down", mlp.down_proj)):
        assert_close(g[name], m.weight.grad.numpy().T, rtol=1e-12, atol=1e-14, what=name)
