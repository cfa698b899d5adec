"""RoPE reference (Su et al., 2021) vs finite differences, hand angles and frequencies, and HF."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _refcheck import F32_RTOL, FD_SETTINGS, assert_close, fd_check, rng_case
from hypothesis import given

from lmspec.reference import rope, rope_frequencies, rope_vjp
from lmspec.spec import component
from lmspec.spec.rope import RopeScaling


@FD_SETTINGS
@given(component("rope").cases())
def test_vjp_matches_finite_differences(case):
    # rope is linear in x (positions are integers and are not differentiated): any step works
    fd_check("rope", case, {"x": 1.0})


@pytest.mark.parametrize(
    "params",
    [
        {"interleaved": True},
        {"rotary_dim": 4, "interleaved": False},
        {"rotary_dim": 2, "interleaved": True},
        {"scaling": RopeScaling("yarn", factor=8.0, original_max_position=64)},
    ],
)
def test_vjp_edge_cases(params):
    pos = np.array([[0, 5, 131072], [3, 3, 99999]], np.int64)
    case = rng_case({"x": (2, 3, 2, 8)}, params, extra={"positions": pos})
    fd_check("rope", case, {"x": 1.0})


def _basis(d: int, i: int) -> np.ndarray:
    x = np.zeros((1, 1, 1, d))
    x[..., i] = 1.0
    return x


def test_hand_rotation_of_basis_vectors():
    pos = np.array([[1]], np.int64)
    # D = 4, theta any: inv_freq_0 = 1, so position 1 rotates pair 0 by 1 rad.
    # half-split pairs (x0, x2): e_0 -> cos(1) e_0 + sin(1) e_2
    y = rope(_basis(4, 0), pos, theta=100.0)
    assert_close(y.reshape(-1), [math.cos(1), 0, math.sin(1), 0], atol=1e-16)
    # interleaved pairs (x0, x1): e_0 -> cos(1) e_0 + sin(1) e_1
    y = rope(_basis(4, 0), pos, theta=100.0, interleaved=True)
    assert_close(y.reshape(-1), [math.cos(1), math.sin(1), 0, 0], atol=1e-16)
    # theta = 100, D = 4: inv_freq_1 = 100^(-2/4) = 0.1; position 10 -> angle 1 on pair 1,
    # angle 10 on pair 0. half-split: e_1 pairs with e_3 -> cos(1) e_1 + sin(1) e_3
    pos = np.array([[10]], np.int64)
    y = rope(_basis(4, 1), pos, theta=100.0)
    assert_close(y.reshape(-1), [0, math.cos(1), 0, math.sin(1)], atol=1e-15)
    # interleaved: e_1 is the second member of pair 0 -> (-sin 10, cos 10, 0, 0)
    y = rope(_basis(4, 1), pos, theta=100.0, interleaved=True)
    assert_close(y.reshape(-1), [-math.sin(10), math.cos(10), 0, 0], atol=1e-15)


def test_hand_partial_and_attention_factor():
    x = np.arange(1.0, 7.0).reshape(1, 1, 1, 6)
    # rotary_dim 2: only (x0, x1) rotate (by angle = position with inv_freq_0 = 1); x2.. pass
    y = rope(x, np.array([[2]], np.int64), rotary_dim=2)
    c, s = math.cos(2), math.sin(2)
    assert_close(y.reshape(-1), [c - 2 * s, s + 2 * c, 3, 4, 5, 6], atol=1e-15)
    # YaRN factor 4 at position 0: no rotation, only the temperature 0.1 ln 4 + 1
    y = rope(x, np.array([[0]], np.int64), scaling=RopeScaling("yarn", factor=4.0))
    assert_close(y, x * (0.1 * math.log(4.0) + 1.0), rtol=1e-15)


def test_hand_frequencies():
    # r = 4, theta = 1e4: inv_freq = [1, 1e4^(-1/2)] = [1, 0.01]
    assert_close(rope_frequencies(4, 1e4)[0], [1.0, 0.01], rtol=1e-15)
    # linear factor 2 halves them
    assert_close(rope_frequencies(4, 1e4, RopeScaling("linear", 2.0))[0], [0.5, 0.005])
    # ntk factor 4, r = 4: theta' = 1e4 * 4^(4/2) = 1.6e5; inv = [1, 1.6e5^(-1/2) = 1/400]
    assert_close(rope_frequencies(4, 1e4, RopeScaling("ntk", 4.0))[0], [1.0, 1 / 400])
    # llama3: r = 8, theta = 1e4 -> inv = [1, 0.1, 0.01, 0.001], wavelengths 2 pi / inv =
    # [6.28, 62.8, 628.3, 6283]; L = 1000, low_freq 1, high_freq 4 -> bounds 1000 and 250:
    # i = 0, 1 keep; i = 3 (6283 > 1000) -> 0.001 / 8; i = 2 is in between with
    # s = (L / w - 1) / (4 - 1) = (10 / (2 pi) - 1) / 3 -> 0.01 ((1 - s) / 8 + s)
    s = (10 / (2 * math.pi) - 1) / 3
    llama3 = RopeScaling("llama3", 8.0, original_max_position=1000)
    inv, m = rope_frequencies(8, 1e4, llama3)
    assert_close(inv, [1.0, 0.1, 0.01 * ((1 - s) / 8 + s), 0.001 / 8], rtol=1e-14)
    assert m == 1.0
    # yarn: r = 8, theta = 1e4, L = 2048, beta 32 / 1, factor 4:
    # dim(n) = 8 ln(2048 / (2 pi n)) / (2 ln 1e4): dim(32) = 1.008 -> floor 1;
    # dim(1) = 2.513 -> ceil 3; ramp_i = clip((i - 1) / 2) = [0, 0, .5, 1]; extra = 1 - ramp
    # inv = [1, 0.1, 0.01 (0.5 / 4 + 0.5), 0.001 / 4]; attention factor 0.1 ln 4 + 1
    inv, m = rope_frequencies(8, 1e4, RopeScaling("yarn", 4.0, original_max_position=2048))
    assert_close(inv, [1.0, 0.1, 0.00625, 0.00025], rtol=1e-14)
    assert_close(m, 0.1 * math.log(4) + 1, rtol=1e-15)


def test_conventions_are_conjugate_by_the_pair_permutation():
    rng = np.random.default_rng(11)
    x, pos = rng.standard_normal((2, 3, 2, 10)), rng.integers(0, 1000, (2, 3))
    r = 8
    perm = np.r_[np.arange(0, r, 2), np.arange(1, r, 2), np.arange(r, 10)]  # 2i -> i
    inter = rope(x, pos, rotary_dim=r, interleaved=True)
    half = rope(x[..., perm], pos, rotary_dim=r, interleaved=False)
    assert_close(inter[..., perm], half, rtol=1e-14, atol=1e-14)
    # and the two conventions do differ
    assert np.max(np.abs(rope(x, pos, rotary_dim=r) - inter)) > 0.1


def test_vjp_is_the_inverse_rotation():
    # rotations are orthogonal: the vjp of y is x itself (no YaRN temperature)
    rng = np.random.default_rng(12)
    x, pos = rng.standard_normal((1, 4, 3, 6)), rng.integers(0, 1 << 17, (1, 4))
    for inter in (False, True):
        y = rope(x, pos, interleaved=inter)
        assert_close(rope_vjp(y, x, pos, interleaved=inter)["x"], x, rtol=1e-12, atol=1e-13)


# ---- HF transformers (computes inv_freq and angles in float32) ----


def _llama_config(r: int, rope_parameters: dict, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=2 * r,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=r,
        rope_parameters=rope_parameters,
        **kw,
    )


HF_SCALINGS = [
    ({"rope_type": "default"}, None),
    ({"rope_type": "linear", "factor": 4.0}, RopeScaling("linear", 4.0)),
    (
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        RopeScaling("llama3", 8.0, original_max_position=8192),
    ),
    (
        {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 2.0,
            "high_freq_factor": 8.0,
            "original_max_position_embeddings": 64,
        },
        RopeScaling("llama3", 32.0, 64, low_freq_factor=2.0, high_freq_factor=8.0),
    ),
    (
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048},
        RopeScaling("yarn", 4.0, 2048),
    ),
    (
        {
            "rope_type": "yarn",
            "factor": 32.0,
            "original_max_position_embeddings": 64,
            "beta_fast": 4.0,
            "beta_slow": 0.5,
            "truncate": False,
        },
        RopeScaling("yarn", 32.0, 64, beta_fast=4.0, beta_slow=0.5, truncate=False),
    ),
    (
        {
            "rope_type": "yarn",
            "factor": 8.0,
            "original_max_position_embeddings": 16,
            "attention_factor": 0.7,
        },
        RopeScaling("yarn", 8.0, 16, attention_factor=0.7),
    ),
]


@pytest.mark.parametrize(("r", "theta"), [(64, 10000.0), (128, 500000.0), (6, 10.0)])
@pytest.mark.parametrize(("hf", "ours"), HF_SCALINGS)
def test_frequencies_against_hf_rope_init(hf, ours, r, theta):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = _llama_config(r, {**hf, "rope_theta": theta}, max_position_embeddings=1 << 17)
    if hf["rope_type"] == "default":
        inv, factor = LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
    else:
        inv, factor = ROPE_INIT_FUNCTIONS[hf["rope_type"]](cfg, torch.device("cpu"))
    want_inv, want_m = rope_frequencies(r, theta, ours)
    assert_close(inv.double().numpy(), want_inv, rtol=4 * F32_RTOL, atol=0)
    assert_close(factor, want_m, rtol=1e-12)


@pytest.mark.parametrize("factor", [2.0, 4.0, 8.0])
def test_ntk_against_hf_dynamic_where_it_is_static(factor):
    # HF "dynamic" uses base * (factor * n / L - (factor - 1)) ** (r / (r - 2)) at length n;
    # at n = L (2 - 1/factor) the bracket is exactly factor: the static NTK-aware base change
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    length, r = 2048, 16
    cfg = _llama_config(
        r,
        {"rope_type": "dynamic", "factor": factor, "rope_theta": 1e4},
        max_position_embeddings=length,
    )
    n = int(length * (2 - 1 / factor))
    assert factor * n / length - (factor - 1) == factor
    inv, _ = ROPE_INIT_FUNCTIONS["dynamic"](cfg, torch.device("cpu"), seq_len=n)
    want = rope_frequencies(r, 1e4, RopeScaling("ntk", factor))[0]
    assert_close(inv.double().numpy(), want, rtol=4 * F32_RTOL, atol=0)


def _hf_cos_sin(r: int, theta: float, pos: np.ndarray, rope_parameters: dict | None = None):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    params = {"rope_type": "default", **(rope_parameters or {}), "rope_theta": theta}
    emb = LlamaRotaryEmbedding(_llama_config(r, params, max_position_embeddings=1 << 17))
    dummy = torch.zeros(1, dtype=torch.float64)
    return emb(dummy, torch.tensor(pos))  # (B, T, r) each, cat(freqs, freqs)


@pytest.mark.parametrize(("hf", "ours"), [HF_SCALINGS[0], HF_SCALINGS[4], HF_SCALINGS[2]])
def test_half_split_against_hf_llama(hf, ours):
    torch = pytest.importorskip("torch")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rng = np.random.default_rng(13)
    # float32 angles in HF: positions kept below 200 so that they agree to ~1e-5
    x, pos = rng.standard_normal((2, 5, 3, 16)), rng.integers(0, 200, (2, 5))
    cos, sin = _hf_cos_sin(16, 1e4, pos, hf)
    xt = torch.tensor(x)
    q, _ = apply_rotary_pos_emb(xt, xt, cos, sin, unsqueeze_dim=2)
    assert_close(rope(x, pos, theta=1e4, scaling=ours), q.numpy(), rtol=0, atol=3e-5)


def test_partial_half_split_against_hf_gpt_neox():
    torch = pytest.importorskip("torch")
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

    rng = np.random.default_rng(14)
    x, pos = rng.standard_normal((1, 6, 2, 12)), rng.permutation(6)[None, :] * 17
    cos, sin = _hf_cos_sin(4, 1e4, pos)  # partial_rotary_factor 1/3 of head_dim 12
    xt = torch.tensor(x)
    q, _ = apply_rotary_pos_emb(xt, xt, cos, sin, unsqueeze_dim=2)
    assert_close(rope(x, pos, theta=1e4, rotary_dim=4), q.numpy(), rtol=0, atol=3e-5)


def test_interleaved_against_hf_deepseek_v3():
    torch = pytest.importorskip("torch")
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
        apply_rotary_pos_emb_interleave,
    )

    rng = np.random.default_rng(15)
    x, pos = rng.standard_normal((2, 4, 2, 8)), rng.integers(0, 100, (2, 4))
    cos, sin = _hf_cos_sin(8, 1e4, pos)
    xt = torch.tensor(x)
    q, _ = apply_rotary_pos_emb_interleave(xt, xt, cos, sin, unsqueeze_dim=2)
    # HF returns the rotated pairs de-interleaved: [even slots..., odd slots...]
    perm = np.r_[np.arange(0, 8, 2), np.arange(1, 8, 2)]
    got = rope(x, pos, theta=1e4, interleaved=True)[..., perm]
    assert_close(got, q.numpy(), rtol=0, atol=3e-5)
