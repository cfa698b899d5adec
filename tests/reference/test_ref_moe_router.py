"""moe_router reference vs finite differences, hand-derived routings, and HF transformers'
routers (Mixtral, Qwen3-MoE, DeepSeek-V3, Mistral4) built from small configs."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from _refcheck import F32_RTOL, assert_close, fd_check, rng_case

from lmspec.reference import moe_router
from lmspec.spec import Case

# ----------------------------------------------------------------------------- gradients

FD_PARAMS = [
    dict(top_k=2, score_func="softmax", norm_topk_prob=False),
    dict(top_k=3, score_func="softmax", norm_topk_prob=True, routed_scaling_factor=2.5),
    dict(top_k=2, score_func="sigmoid", norm_topk_prob=True, n_group=4, topk_group=2,
         routed_scaling_factor=2.5, masked_group_fill="-inf"),
    dict(top_k=3, score_func="sigmoid", norm_topk_prob=False, n_group=2, topk_group=1),
]


@pytest.mark.parametrize("params", FD_PARAMS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_vjp_matches_finite_differences(params, with_bias):
    case = rng_case({"logits": (5, 8), "bias": (8,) if with_bias else None}, params, seed=3)
    if with_bias:
        case = Case(dict(case.arrays, bias=0.1 * case.arrays["bias"]), params)
    fd_check("moe_router", case, {"logits": 1e-6}, rtol=1e-6)


# ----------------------------------------------------------------------------- hand values


def test_softmax_top2_hand_values():
    logits = np.log(np.array([[1.0, 2.0, 3.0, 4.0]]))  # scores 0.1, 0.2, 0.3, 0.4
    ids, w, s = moe_router(logits, top_k=2)
    assert ids.tolist() == [[3, 2]]
    assert_close(s, [[0.1, 0.2, 0.3, 0.4]], what="scores")
    assert_close(w, [[0.4, 0.3]], what="weights")
    _, wn, _ = moe_router(logits, top_k=2, norm_topk_prob=True, routed_scaling_factor=2.0)
    assert_close(wn, [[8 / 7, 6 / 7]], what="renormalized and scaled")


def test_ties_break_lowest_index_first():
    ids, w, _ = moe_router(np.zeros((2, 6)), top_k=3)
    assert ids.tolist() == [[0, 1, 2]] * 2
    ids, _, _ = moe_router(np.array([[1.0, 2.0, 1.0, 2.0]]), top_k=3)
    assert ids.tolist() == [[1, 3, 0]]


def _logit(p):
    return np.log(np.asarray(p) / (1 - np.asarray(p)))


def test_masked_group_fill_zero_vs_neg_inf():
    """The minimal case where the two fills differ: a negative corrected score in the kept
    group loses to the 0.0 of a masked group (HF's old fill), never to -inf (DeepSeek's)."""
    logits = _logit([[0.9, 0.1, 0.2, 0.2]])
    bias = np.array([0.0, -0.5, 0.0, 0.0])  # u = [0.9, -0.4, 0.2, 0.2]; groups 0.5 vs 0.4
    kw = dict(top_k=2, score_func="sigmoid", n_group=2, topk_group=1)
    ids, w, _ = moe_router(logits, bias, masked_group_fill="zero", **kw)
    assert ids.tolist() == [[0, 2]]  # expert 2 of the dropped group (u 0.0 > -0.4)
    assert_close(w, [[0.9, 0.2]], what="weights are unbiased scores")
    ids, w, _ = moe_router(logits, bias, masked_group_fill="-inf", **kw)
    assert ids.tolist() == [[0, 1]]
    assert_close(w, [[0.9, 0.1]])


def test_group_score_is_the_top2_sum_not_the_max():
    # group 0: [0.9, 0.1] (max 0.9, top-2 sum 1.0); group 1: [0.6, 0.6] (max 0.6, sum 1.2)
    logits = _logit([[0.9, 0.1, 0.6, 0.6]])
    ids, _, _ = moe_router(logits, top_k=1, score_func="sigmoid", n_group=2, topk_group=1)
    assert ids.tolist() == [[2]]


def test_bias_selects_but_does_not_weigh():
    logits = np.log(np.array([[4.0, 3.0, 2.0, 1.0]]))  # scores 0.4 0.3 0.2 0.1
    ids, w, _ = moe_router(logits, np.array([0.0, 0.0, 0.0, 1.0]), top_k=2)
    assert ids.tolist() == [[3, 0]]
    assert_close(w, [[0.1, 0.4]])


# ----------------------------------------------------------------------------- HF transformers


def _hf_router(cls_name: str, module: str, cfg, seed=0):
    torch = pytest.importorskip("torch")
    mod = pytest.importorskip(f"transformers.models.{module}.modeling_{module}")
    torch.manual_seed(seed)
    router = getattr(mod, cls_name)(cfg).eval()
    with torch.no_grad():
        router.weight.normal_(0.0, 1.0)
    return torch, mod, router


def _run_hf(torch, router, n, d, seed=1):
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))
    with torch.no_grad():
        logits, weights, ids = router(x)
    return (logits.double().numpy(), weights.double().numpy(), ids.numpy())


def _by_id(ids, w):
    order = np.argsort(ids, axis=-1)
    return np.take_along_axis(ids, order, -1), np.take_along_axis(w, order, -1)


def test_matches_hf_mixtral_router():
    from transformers import MixtralConfig

    cfg = MixtralConfig(hidden_size=16, num_local_experts=8, num_experts_per_tok=2)
    torch, _, router = _hf_router("MixtralTopKRouter", "mixtral", cfg)
    logits, hf_w, hf_ids = _run_hf(torch, router, 64, 16)
    ids, w, _ = moe_router(logits, top_k=2, norm_topk_prob=True)  # Mixtral always renormalizes
    assert np.array_equal(ids, hf_ids)
    assert_close(w, hf_w, rtol=F32_RTOL, atol=0, what="Mixtral weights")


@pytest.mark.parametrize("norm", [False, True])
def test_matches_hf_qwen3_moe_router(norm):
    from transformers import Qwen3MoeConfig

    cfg = Qwen3MoeConfig(hidden_size=16, num_experts=12, num_experts_per_tok=4,
                         norm_topk_prob=norm)
    torch, _, router = _hf_router("Qwen3MoeTopKRouter", "qwen3_moe", cfg)
    logits, hf_w, hf_ids = _run_hf(torch, router, 64, 16)
    ids, w, _ = moe_router(logits, top_k=4, norm_topk_prob=norm)
    assert np.array_equal(ids, hf_ids)
    assert_close(w, hf_w, rtol=F32_RTOL, atol=0, what="Qwen3-MoE weights")


def _hf_fill(router_cls) -> str:
    """The masked-group fill of the installed HF code: -inf in transformers 5.x, 0.0 before."""
    return "-inf" if 'float("-inf")' in inspect.getsource(router_cls.forward) else "zero"


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("groups", [(4, 2), (1, 1)])
def test_matches_hf_deepseek_v3_router_with_a_nonzero_bias(norm, groups):
    from transformers import DeepseekV3Config

    n_group, topk_group = groups
    cfg = DeepseekV3Config(hidden_size=16, n_routed_experts=16, num_experts_per_tok=4,
                           n_group=n_group, topk_group=topk_group, norm_topk_prob=norm,
                           routed_scaling_factor=2.5)
    torch, mod, router = _hf_router("DeepseekV3TopkRouter", "deepseek_v3", cfg)
    bias = np.random.default_rng(5).standard_normal(16).astype(np.float32) * 0.5
    with torch.no_grad():  # a zero-initialised buffer: set it, or it tests nothing
        router.e_score_correction_bias.copy_(torch.from_numpy(bias))
    logits, hf_w, hf_ids = _run_hf(torch, router, 64, 16)
    fill = _hf_fill(mod.DeepseekV3TopkRouter)
    ids, w, _ = moe_router(logits, bias.astype(np.float64), top_k=4, score_func="sigmoid",
                           norm_topk_prob=norm, n_group=n_group, topk_group=topk_group,
                           routed_scaling_factor=2.5, masked_group_fill=fill)
    unbiased, _, _ = moe_router(logits, top_k=4, score_func="sigmoid", n_group=n_group,
                                topk_group=topk_group, masked_group_fill=fill)
    assert not np.array_equal(np.sort(ids, -1), np.sort(unbiased, -1)), "bias changed nothing"
    (ids_s, w_s), (hf_ids_s, hf_w_s) = _by_id(ids, w), _by_id(hf_ids, hf_w)  # HF: sorted=False
    assert np.array_equal(ids_s, hf_ids_s)
    assert_close(w_s, hf_w_s, rtol=F32_RTOL, atol=0, what="DeepSeek-V3 weights")


def test_matches_hf_mistral4_group_router_zero_fill():
    """Mistral4's router is DeepSeek's group-limited top-k on softmax scores with the 0.0 fill."""
    cfg_mod = pytest.importorskip("transformers.models.mistral4.configuration_mistral4")
    cfg = cfg_mod.Mistral4Config(hidden_size=16, n_routed_experts=16, num_experts_per_tok=4,
                                 n_group=4, topk_group=2, norm_topk_prob=True,
                                 routed_scaling_factor=1.5)
    torch, mod, router = _hf_router("Mistral4TopkRouter", "mistral4", cfg)
    assert _hf_fill(mod.Mistral4TopkRouter) == "zero"
    logits, hf_w, hf_ids = _run_hf(torch, router, 64, 16)
    ids, w, _ = moe_router(logits, top_k=4, norm_topk_prob=True, n_group=4, topk_group=2,
                           routed_scaling_factor=1.5, masked_group_fill="zero")
    (ids_s, w_s), (hf_ids_s, hf_w_s) = _by_id(ids, w), _by_id(hf_ids, hf_w)
    assert np.array_equal(ids_s, hf_ids_s)
    assert_close(w_s, hf_w_s, rtol=F32_RTOL, atol=0, what="Mistral4 weights")
