"""GeGLU reference (Shazeer, 2020) vs finite differences, hand values, torch and HF GemmaMLP."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _refcheck import FD_SETTINGS, assert_close, fd_check, rng_case
from hypothesis import given

from lmspec.reference import geglu, geglu_vjp
from lmspec.spec import component

STEPS = {"x": 1e-6, "w_gate": 1e-6, "w_up": 1e-6, "w_down": 1e-6}
ONE = np.array([[1.0]])


@FD_SETTINGS
@given(component("geglu").cases())
def test_vjp_matches_finite_differences(case):
    fd_check("geglu", case, STEPS)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_vjp_edge_cases(approximate):
    case = rng_case(
        {"x": (3, 4), "w_gate": (4, 6), "w_up": (4, 6), "w_down": (6, 3)},
        {"approximate": approximate},
        scale=2.0,
    )
    fd_check("geglu", case, STEPS)


def test_hand_values():
    # gelu_none(1) = Phi(1) = (1 + erf(1 / sqrt 2)) / 2 = 0.8413447460685429
    assert_close(geglu(ONE, ONE, ONE, ONE, approximate="none"), [[0.8413447460685429]], rtol=1e-15)
    # gelu_tanh(1) = (1 + tanh(sqrt(2/pi) * (1 + 0.044715))) / 2
    want = 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * 1.044715))
    assert_close(geglu(ONE, ONE, ONE, ONE, approximate="tanh"), [[want]], rtol=1e-15)
    # gelu(-1) = gelu(1) - 1 for both forms (x Phi(x) - x Phi(-x)... = x); with up = 2, down = 3
    for approx in ("tanh", "none"):
        y1 = geglu(ONE, ONE, ONE, ONE, approximate=approx)
        ym = geglu(ONE, -ONE, ONE, ONE, approximate=approx)
        assert_close(ym, y1 - 1.0, rtol=1e-14, what=approx)


def test_hand_gradient():
    # d gelu_none / da at a = 0 is Phi(0) = 1/2, so with up = 1, dy/dwg = x * 1/2 * b = 1/2 at 0
    g = geglu_vjp(ONE, ONE, np.array([[0.0]]), ONE, ONE, approximate="none")
    assert_close(g["w_gate"], [[0.5]], rtol=1e-15)
    # d gelu_none / da at 1 = Phi(1) + phi(1) = 0.8413447460685429 + exp(-1/2) / sqrt(2 pi)
    g = geglu_vjp(ONE, ONE, ONE, ONE, ONE, approximate="none")
    want = 0.8413447460685429 + math.exp(-0.5) / math.sqrt(2 * math.pi)
    assert_close(g["w_gate"], [[want]], rtol=1e-15)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_against_torch_gelu_mlp(approximate):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    x, dy = rng.standard_normal((7, 6)) * 2, rng.standard_normal((7, 5))
    ws = [rng.standard_normal(s) * 0.5 for s in ((6, 9), (6, 9), (9, 5))]
    ts = [torch.tensor(a, requires_grad=True) for a in (x, *ws)]
    gate = torch.nn.functional.gelu(ts[0] @ ts[1], approximate=approximate)
    yt = (gate * (ts[0] @ ts[2])) @ ts[3]
    yt.backward(torch.tensor(dy))
    assert_close(
        geglu(x, *ws, approximate=approximate), yt.detach().numpy(), rtol=1e-12, atol=1e-14
    )
    g = geglu_vjp(dy, x, *ws, approximate=approximate)
    for name, t in zip(("x", "w_gate", "w_up", "w_down"), ts):
        assert_close(g[name], t.grad.numpy(), rtol=1e-12, atol=1e-13, what=name)


def test_against_hf_gemma_mlp():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import GemmaConfig
    from transformers.models.gemma.modeling_gemma import GemmaMLP

    cfg = GemmaConfig(
        hidden_size=8,
        intermediate_size=12,
        hidden_act="gelu_pytorch_tanh",
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=4,
    )
    mlp = GemmaMLP(cfg).double()
    x = np.random.default_rng(9).standard_normal((3, 4, 8))
    with torch.no_grad():
        want = mlp(torch.tensor(x)).numpy()
    wg, wu, wd = (m.weight.detach().numpy().T for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    assert_close(geglu(x, wg, wu, wd, approximate="tanh"), want, rtol=1e-12, atol=1e-14)
    # the erf form differs from Gemma's by far more than rounding: the test can tell them apart
    assert np.max(np.abs(geglu(x, wg, wu, wd, approximate="none") - want)) > 1e-6
