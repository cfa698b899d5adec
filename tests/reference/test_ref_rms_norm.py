"""RMSNorm reference (Zhang & Sennrich, 2019) vs finite differences, hand values, torch and HF."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _refcheck import F32_RTOL, FD_SETTINGS, assert_close, fd_check, rng_case
from hypothesis import given

from lmspec.reference import rms_norm, rms_norm_vjp
from lmspec.spec import component


def _steps(case) -> dict[str, float]:
    # the curvature scale of x / sqrt(ms + eps) is the smallest row's sqrt(ms + eps)
    x, eps = case.arrays["x"], case.params["eps"]
    ms = np.mean(x * x, axis=-1) + eps if x.size else np.array([1.0])
    return {"x": 1e-6 * min(1.0, math.sqrt(float(ms.min()))), "weight": 1.0}


@FD_SETTINGS
@given(component("rms_norm").cases())
def test_vjp_matches_finite_differences(case):
    fd_check("rms_norm", case, _steps(case))


@pytest.mark.parametrize("offset", [0.0, 1.0])
@pytest.mark.parametrize("scale", [1.0, 1e-4])
def test_vjp_edge_cases(offset, scale):
    # Gemma's 1 + w, and inputs far below sqrt(eps) where eps dominates the root
    case = rng_case(
        {"x": (3, 5), "weight": (5,)}, {"eps": 1e-6, "weight_offset": offset}, scale=scale
    )
    fd_check("rms_norm", case, _steps(case))


def test_hand_values():
    # x = [3, 4]: mean(x^2) = 12.5, rms = 5 / sqrt(2), y = [3, 4] * sqrt(2) / 5
    y = rms_norm(np.array([3.0, 4.0]), eps=1e-300)
    assert_close(y, [0.6 * math.sqrt(2), 0.8 * math.sqrt(2)], rtol=1e-15)
    # eps inside the root: [1, 1] with eps = 3 -> 1 / sqrt(1 + 3) = 0.5 (outside: 1 / (1 + 3))
    assert_close(rms_norm(np.array([1.0, 1.0]), eps=3.0), [0.5, 0.5], rtol=1e-15)
    # Gemma offset: weight [0, 1] with offset 1 scales by [1, 2]
    y = rms_norm(np.array([3.0, 4.0]), np.array([0.0, 1.0]), eps=1e-300, weight_offset=1.0)
    assert_close(y, [0.6 * math.sqrt(2), 1.6 * math.sqrt(2)], rtol=1e-15)
    # weight None ignores the offset
    assert_close(rms_norm(np.array([1.0, 1.0]), eps=3.0, weight_offset=1.0), [0.5, 0.5])
    # tiny x: mean(x^2) = 1e-60 << eps = 1e-6, so y = x / sqrt(1e-6) = 1e3 x
    assert_close(rms_norm(np.array([1e-30, -1e-30]), eps=1e-6), [1e-27, -1e-27], rtol=1e-12)


def test_hand_gradient():
    # D = 1: y = x / sqrt(x^2 + eps), dy/dx = eps / (x^2 + eps)^1.5; x = 1, eps = 3 -> 3 / 8
    g = rms_norm_vjp(np.array([1.0]), np.array([1.0]), eps=3.0)
    assert_close(g["x"], [3.0 / 8.0], rtol=1e-15)


def test_against_torch_functional():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x, w, dy = (
        rng.standard_normal((2, 3, 17)),
        rng.standard_normal(17),
        rng.standard_normal((2, 3, 17)),
    )
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    yt = torch.nn.functional.rms_norm(xt, (17,), wt, eps=1e-5)
    yt.backward(torch.tensor(dy))
    assert_close(rms_norm(x, w, eps=1e-5), yt.detach().numpy(), rtol=1e-13)
    g = rms_norm_vjp(dy, x, w, eps=1e-5)
    assert_close(g["x"], xt.grad.numpy(), rtol=1e-11, atol=1e-13)
    assert_close(g["weight"], wt.grad.numpy(), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("gemma", [False, True])
def test_against_hf_rmsnorm(gemma):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if gemma:
        from transformers.models.gemma.modeling_gemma import GemmaRMSNorm as Norm
    else:
        from transformers.models.llama.modeling_llama import LlamaRMSNorm as Norm
    rng = np.random.default_rng(2)
    # float32-representable inputs: HF normalises in float32 whatever the input dtype
    x = rng.standard_normal((4, 24)).astype(np.float32).astype(np.float64)
    w = rng.standard_normal(24).astype(np.float32).astype(np.float64)
    norm = Norm(24, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor(w))
        want = norm(torch.tensor(x)).numpy()
    got = rms_norm(x, w, eps=1e-6, weight_offset=1.0 if gemma else 0.0)
    assert_close(got, want, rtol=F32_RTOL * 4, atol=1e-6)
