"""MoE layer reference vs finite differences, hand values (the capacity order) and the MoE
blocks of HF transformers' Mixtral, Qwen2-MoE, Qwen3-MoE and DeepSeek-V3."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _refcheck import F32_RTOL, FD_SETTINGS, assert_close, fd_check, rng_case
from hypothesis import given

from lmspec import reference as R
from lmspec.reference.moe_layer import kept_mask
from lmspec.spec import component
from lmspec.spec.moe_layer import expert_capacity

STEPS = {n: 1e-6 for n in component("moe_layer").differentiable}
SHARED = ("shared_w_gate", "shared_w_up", "shared_w_down", "shared_gate")


@FD_SETTINGS
@given(component("moe_layer").cases())
def test_vjp_matches_finite_differences(case):
    fd_check("moe_layer", case, STEPS)


def _shapes(n=5, k=2, e=3, d=4, f=3, fs=None, gate=False):
    shapes = {"x": (n, d), "topk_weights": (n, k), "w_gate": (e, d, f), "w_up": (e, d, f),
              "w_down": (e, f, d), **dict.fromkeys(SHARED)}
    if fs:
        shapes.update(shared_w_gate=(d, fs), shared_w_up=(d, fs), shared_w_down=(fs, d))
    if gate:
        shapes["shared_gate"] = (d, 1)
    return shapes


def test_vjp_with_gated_shared_expert_and_dropping():
    ids = np.array([[0, 1], [0, 2], [0, 1], [2, 0], [0, 1]])
    for cf in (None, 0.5):
        fd_check("moe_layer", rng_case(_shapes(fs=2, gate=True), {"capacity_factor": cf},
                                       extra={"topk_ids": ids}), STEPS)


def test_hand_values():
    # D = F = 1, one token, experts e: silu(x g_e) (x u_e) d_e; weights 0.25 and 0.75
    x, g, u, d = 2.0, np.array([1.0, -1.0]), np.array([3.0, 1.0]), np.array([0.5, 2.0])

    def silu(a):
        return a / (1.0 + math.exp(-a))

    expert = [silu(x * g[e]) * x * u[e] * d[e] for e in range(2)]
    out, kept = R.moe_layer(np.array([[x]]), np.array([[1, 0]]), np.array([[0.25, 0.75]]),
                            g.reshape(2, 1, 1), u.reshape(2, 1, 1), d.reshape(2, 1, 1))
    assert_close(out, [[0.25 * expert[1] + 0.75 * expert[0]]], rtol=1e-15)
    assert kept.all()
    # + Qwen2's gated shared expert: sigmoid(x s) * silu(x sg) (x su) sd
    sh = [np.array([[v]]) for v in (0.5, -1.0, 2.0, 0.3)]
    out, _ = R.moe_layer(np.array([[x]]), np.array([[1, 0]]), np.array([[0.25, 0.75]]),
                         g.reshape(2, 1, 1), u.reshape(2, 1, 1), d.reshape(2, 1, 1), *sh)
    shared = silu(x * 0.5) * (x * -1.0) * 2.0 / (1.0 + math.exp(-x * 0.3))
    assert_close(out, [[0.25 * expert[1] + 0.75 * expert[0] + shared]], rtol=1e-14)


def test_capacity_is_slot_priority():
    """C = ceil(0.5 * 2 * 2 / 2) = 1. Slot priority: both slot-0 choices win, both slot-1
    choices are dropped; token-major order would have kept token 0's two and dropped
    token 1's."""
    ids = np.array([[0, 1], [1, 0]])
    assert expert_capacity(2, 2, 2, 0.5) == 1
    assert kept_mask(ids, 2, 1).tolist() == [[True, False], [True, False]]
    # ceil, not round: 1.25 * 3 * 2 / 4 = 1.875 -> 2; exactly integral stays put
    assert expert_capacity(3, 2, 4, 1.25) == 2 and expert_capacity(4, 2, 4, 1.0) == 2
    assert expert_capacity(3, 1, 4, 0.1) == 1 and expert_capacity(0, 2, 4, 1.0) == 0
    # one expert popular: C = ceil(1.0 * 4 * 1 / 2) = 2, the first two tokens in order win
    assert kept_mask(np.array([[1], [1], [1], [0]]), 2, 2).ravel().tolist() == [
        True, True, False, True]
    # the dropped slot contributes nothing and gets a zero weight gradient
    case = rng_case(_shapes(n=2, k=2, e=2), {"capacity_factor": 0.5}, extra={"topk_ids": ids})
    out, kept = R.moe_layer(**case.arrays, **case.params)
    a = dict(case.arrays, topk_weights=case.arrays["topk_weights"] * kept)
    assert_close(out, R.moe_layer(**a)[0], rtol=1e-14, atol=1e-15)  # other BLAS blocking
    g = R.moe_layer_vjp((np.ones_like(out), None), **case.arrays, **case.params)
    assert np.all(g["topk_weights"][~kept] == 0)


def test_top_k_equal_to_e_is_the_dense_weighted_sum():
    """Every expert chosen once: the layer is sum_e w_e expert_e(x) (the dense MoE)."""
    case = rng_case(_shapes(n=4, k=3, e=3))
    ids = np.tile(np.array([2, 0, 1]), (4, 1))
    out, _ = R.moe_layer(**dict(case.arrays, topk_ids=ids))
    a = case.arrays
    dense = sum(a["topk_weights"][:, [j]] * R.swiglu(a["x"], a["w_gate"][e], a["w_up"][e],
                                                      a["w_down"][e]) for j, e in enumerate(ids[0]))
    assert_close(out, dense, rtol=1e-13, atol=1e-13)


# ----------------------------------------------------------------------------- HF MoE blocks


def _hf_block(name: str):
    """A small HF MoE block in float64 with random weights: (block, router kwargs)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    common = dict(hidden_size=16, num_attention_heads=2, num_key_value_heads=2)
    if name == "mixtral":
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

        cfg = MixtralConfig(intermediate_size=8, num_local_experts=6, num_experts_per_tok=2,
                            **common)
        block, router = MixtralSparseMoeBlock(cfg), dict(top_k=2, norm_topk_prob=True)
    elif name in ("qwen2_moe", "qwen3_moe"):
        from transformers import Qwen2MoeConfig, Qwen3MoeConfig
        from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

        qwen2 = name == "qwen2_moe"
        cfg = (Qwen2MoeConfig if qwen2 else Qwen3MoeConfig)(
            moe_intermediate_size=8, shared_expert_intermediate_size=12, num_experts=6,
            num_experts_per_tok=3, norm_topk_prob=not qwen2, **common)
        block = (Qwen2MoeSparseMoeBlock if qwen2 else Qwen3MoeSparseMoeBlock)(cfg)
        router = dict(top_k=3, norm_topk_prob=not qwen2)
    else:
        from transformers import DeepseekV3Config
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

        cfg = DeepseekV3Config(moe_intermediate_size=8, n_routed_experts=8, num_experts_per_tok=3,
                               n_group=4, topk_group=2, n_shared_experts=1,
                               routed_scaling_factor=2.5, norm_topk_prob=True, **common)
        block = DeepseekV3MoE(cfg)
        router = dict(top_k=3, score_func="sigmoid", norm_topk_prob=True, n_group=4,
                      topk_group=2, routed_scaling_factor=2.5, masked_group_fill="-inf")
    block = block.double().eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.4)
        if name == "deepseek_v3":  # a zero-initialised buffer: make the bias matter
            block.gate.e_score_correction_bias.copy_(
                torch.randn(8, generator=gen, dtype=torch.float64) * 0.3)
    return block, router


def _layer_weights(block) -> dict:
    """HF layouts -> the spec's (in, out): gate_up_proj (E, 2F, D) is [gate; up] stacked."""
    experts = block.experts
    f = experts.down_proj.shape[-1]
    gate_up = experts.gate_up_proj.detach().numpy()
    w = {"w_gate": gate_up[:, :f].transpose(0, 2, 1), "w_up": gate_up[:, f:].transpose(0, 2, 1),
         "w_down": experts.down_proj.detach().numpy().transpose(0, 2, 1)}
    shared = getattr(block, "shared_expert", None) or getattr(block, "shared_experts", None)
    if shared is not None:
        w.update({f"shared_w_{p}": getattr(shared, f"{p}_proj").weight.detach().numpy().T
                  for p in ("gate", "up", "down")})
    if getattr(block, "shared_expert_gate", None) is not None:  # Qwen2-MoE's sigmoid gate
        w["shared_gate"] = block.shared_expert_gate.weight.detach().numpy().T  # (D, 1)
    return w


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3"])
def test_against_hf_moe_blocks(name):
    """With the block's parameters and weights copied over: the reference moe_router gives
    HF's routing (ids as sets, since DeepSeek-V3's top-k is unsorted; weights to float32, as
    HF routes in float32), and moe_layer fed HF's own routing gives HF's output (float64)."""
    import importlib

    import torch

    moe_router = importlib.import_module("lmspec.reference.moe_router").moe_router
    block, router = _hf_block(name)
    x = np.random.default_rng(5).standard_normal((2, 7, 16))
    with torch.no_grad():
        want = block(torch.from_numpy(x)).numpy().reshape(-1, 16)
        _, hf_w, hf_ids = (t.numpy() for t in block.gate(torch.from_numpy(x).reshape(-1, 16)))
    flat = x.reshape(-1, 16)
    logits = flat @ block.gate.weight.detach().numpy().T  # (N, E)
    bias = getattr(block.gate, "e_score_correction_bias", None)
    ids, w, _ = moe_router(logits, None if bias is None else bias.numpy(), **router)
    assert np.array_equal(np.sort(ids, 1), np.sort(hf_ids, 1)), name
    mine, theirs = np.argsort(ids, 1), np.argsort(hf_ids, 1)
    assert_close(np.take_along_axis(w, mine, 1), np.take_along_axis(hf_w, theirs, 1),
                 rtol=F32_RTOL, atol=1e-7, what=f"{name} routing weights")
    out, kept = R.moe_layer(flat, hf_ids, hf_w.astype(np.float64), **_layer_weights(block))
    assert kept.all()
    assert_close(out, want, rtol=1e-12, atol=1e-12, what=name)
