"""MLA reference (DeepSeek-V2/V3) vs finite differences, HF DeepseekV3Attention, its own
properties (forms, decode, MHA reduction), and kv_cache_size vs the DeepSeek-V2 table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _refcheck import F32_RTOL, FD_SETTINGS, assert_close, fd_check
from hypothesis import given

from lmspec.reference import mla, rms_norm, rope, sdpa
from lmspec.spec import Case, component
from lmspec.spec.mla import kv_cache_size, softmax_scale
from lmspec.spec.rope import RopeScaling

DIMS = dict(n_heads=3, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=3, kv_lora_rank=6)


def _arrays(b=2, t=5, d=8, dq=5, tc=None, seed=0, dims=DIMS):
    rng = np.random.default_rng(seed)
    h, dn, dr, dv, dc = (dims[k] for k in ("n_heads", "qk_nope_head_dim", "qk_rope_head_dim",
                                           "v_head_dim", "kv_lora_rank"))
    w = lambda *s: rng.standard_normal(s) / math.sqrt(s[0])  # noqa: E731
    return {
        "x": rng.standard_normal((b, t, d)), "positions": rng.integers(0, 100, (b, t)),
        "w_uq": w(dq or d, h * (dn + dr)), "w_dkv": w(d, dc + dr),
        "kv_norm_weight": 1 + 0.3 * rng.standard_normal(dc), "w_ukv": w(dc, h * (dn + dv)),
        "w_o": w(h * dv, d), "w_dq": None if dq is None else w(d, dq),
        "q_norm_weight": None if dq is None else 1 + 0.3 * rng.standard_normal(dq),
        "c_kv_cache": None if tc is None else rng.standard_normal((b, tc, dc)),
        "k_rope_cache": None if tc is None else rng.standard_normal((b, tc, dr)),
    }


# ----------------------------------------------------------------------------- gradients


@FD_SETTINGS
@given(component("mla").cases())
def test_vjp_matches_finite_differences(case):
    steps = {n: 1e-5 for n in component("mla").differentiable}
    fd_check("mla", case, steps, limit=6, rtol=1e-4)


@pytest.mark.parametrize("form", ["naive", "absorbed"])
@pytest.mark.parametrize("dq,tc", [(5, None), (None, 3)])
def test_vjp_edge_cases(form, dq, tc):
    scaling = RopeScaling("yarn", factor=40.0, original_max_position=16, attention_factor=1.0)
    case = Case(_arrays(dq=dq, tc=tc), dict(DIMS, form=form, scaling=scaling,
                                             mscale_all_dim=1.0))
    fd_check("mla", case, {n: 1e-5 for n in component("mla").differentiable}, limit=8,
             rtol=1e-5)


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("interleaved", [True, False])
def test_naive_equals_absorbed(causal, interleaved):
    a = _arrays(tc=2)
    p = dict(DIMS, causal=causal, interleaved=interleaved)
    for got, want in zip(mla(**a, **p, form="absorbed"), mla(**a, **p, form="naive"),
                         strict=True):
        assert_close(got, want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("form", ["naive", "absorbed"])
def test_decode_with_the_cache_equals_the_full_causal_pass(form):
    a = _arrays(t=6)
    p = dict(DIMS, form=form)
    full, c_full, k_full = mla(**a, **p)
    cache, outs = (None, None), []
    for i in range(6):
        step = dict(a, x=a["x"][:, i:i + 1], positions=a["positions"][:, i:i + 1],
                    c_kv_cache=cache[0], k_rope_cache=cache[1])
        out, *cache = mla(**step, **p)
        outs.append(out)
    assert_close(np.concatenate(outs, axis=1), full, rtol=1e-12, atol=1e-13)
    assert_close(cache[0], c_full, rtol=1e-14, atol=1e-15)  # per-token BLAS order
    assert_close(cache[1], k_full, rtol=1e-14, atol=1e-15)


def test_mla_with_the_identity_latent_is_mha_with_a_shared_rope_key():
    """dc = D, w_dkv = [I_D | W_kr], kv_norm_weight = 1: the latent is rms(x) itself, and MLA
    is MHA (sdpa with Hkv = H) whose keys and values read rms(x) through per-head W_k, W_v
    (the blocks of w_ukv) and whose rope key is one head shared by all query heads."""
    rng = np.random.default_rng(3)
    b, t, d, h, dn, dr, dv = 2, 5, 6, 3, 4, 2, 3
    dims = dict(n_heads=h, qk_nope_head_dim=dn, qk_rope_head_dim=dr, v_head_dim=dv,
                kv_lora_rank=d)
    x, pos = rng.standard_normal((b, t, d)), rng.integers(0, 50, (b, t))
    w_q, w_kr = rng.standard_normal((d, h * (dn + dr))), rng.standard_normal((d, dr))
    w_k, w_v = rng.standard_normal((d, h, dn)), rng.standard_normal((d, h, dv))
    w_o = rng.standard_normal((h * dv, d))
    w_ukv = np.concatenate([w_k, w_v], axis=-1).reshape(d, -1)
    out, _, _ = mla(x, pos, w_q, np.concatenate([np.eye(d), w_kr], 1), np.ones(d), w_ukv, w_o,
                    **dims, interleaved=False)
    # plain MHA, written out
    q = (x @ w_q).reshape(b, t, h, dn + dr)
    q = np.concatenate([q[..., :dn], rope(q[..., dn:], pos)], axis=-1)
    xn = rms_norm(x)
    k_rope = np.broadcast_to(rope((x @ w_kr)[:, :, None], pos), (b, t, h, dr))
    k = np.concatenate([np.einsum("btd,dhn->bthn", xn, w_k), k_rope], axis=-1)
    v = np.einsum("btd,dhv->bthv", xn, w_v)
    o, _ = sdpa(q, k, v, causal=True, scale=1 / math.sqrt(dn + dr))
    assert_close(out, o.reshape(b, t, -1) @ w_o, rtol=1e-12, atol=1e-12)


def test_interleaved_is_the_half_split_rope_of_the_deinterleaved_features():
    a = _arrays()
    p = dict(DIMS)
    dn, dr = p["qk_nope_head_dim"], p["qk_rope_head_dim"]
    perm = np.r_[0:dr:2, 1:dr:2]
    _, _, k_int = mla(**a, **p, interleaved=True)
    moved = a["w_dkv"].copy()
    moved[:, -dr:] = a["w_dkv"][:, -dr:][:, perm]
    _, _, k_half = mla(**dict(a, w_dkv=moved), **p, interleaved=False)
    assert_close(k_int, k_half, rtol=1e-14, atol=1e-15)
    assert dn  # the nope part is never rotated: covered by the HF comparison


def test_softmax_scale_is_hf_yarn_mscale():
    s = RopeScaling("yarn", factor=40.0, original_max_position=4096)
    m = 0.1 * math.log(40.0) + 1
    assert softmax_scale(192, s, 1.0) == pytest.approx(m * m / math.sqrt(192), rel=1e-15)
    assert softmax_scale(192, s, 0.0) == pytest.approx(1 / math.sqrt(192), rel=1e-15)
    assert softmax_scale(192, None, 1.0) == pytest.approx(1 / math.sqrt(192), rel=1e-15)
    small = RopeScaling("yarn", factor=1.0)
    assert softmax_scale(192, small, 1.0) == pytest.approx(1 / math.sqrt(192), rel=1e-15)


# ----------------------------------------------------------------------------- HF oracle


def _hf_attention(dims, d, dq, rope_interleave, rope_parameters):
    torch = pytest.importorskip("torch")
    hf = pytest.importorskip("transformers.models.deepseek_v3.modeling_deepseek_v3")
    from transformers import DeepseekV3Config

    cfg = DeepseekV3Config(
        hidden_size=d, num_attention_heads=dims["n_heads"], num_key_value_heads=dims["n_heads"],
        q_lora_rank=dq, kv_lora_rank=dims["kv_lora_rank"],
        qk_nope_head_dim=dims["qk_nope_head_dim"], qk_rope_head_dim=dims["qk_rope_head_dim"],
        v_head_dim=dims["v_head_dim"], rope_interleave=rope_interleave,
        rope_parameters=rope_parameters, max_position_embeddings=4096, num_hidden_layers=1,
        attention_bias=False)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    attn = hf.DeepseekV3Attention(cfg, layer_idx=0).double().eval()
    with torch.no_grad():  # non-trivial norm weights
        for norm in (attn.kv_a_layernorm, attn.q_a_layernorm):
            if norm is not None:
                norm.weight.uniform_(0.5, 1.5)
    return torch, hf, cfg, attn


def _weights(attn) -> dict:
    t = lambda lin: lin.weight.detach().numpy().T.copy()  # noqa: E731  (out, in) -> (in, out)
    w = {"w_dkv": t(attn.kv_a_proj_with_mqa), "w_ukv": t(attn.kv_b_proj), "w_o": t(attn.o_proj),
         "kv_norm_weight": attn.kv_a_layernorm.weight.detach().numpy().copy()}
    if attn.q_a_proj is not None:
        w.update(w_dq=t(attn.q_a_proj), w_uq=t(attn.q_b_proj),
                 q_norm_weight=attn.q_a_layernorm.weight.detach().numpy().copy())
    else:
        w.update(w_uq=t(attn.q_proj))
    return w


YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0,
        "original_max_position_embeddings": 64, "beta_fast": 32.0, "beta_slow": 1.0,
        "mscale": 1.0, "mscale_all_dim": 1.0}
DEFAULT = {"rope_type": "default", "rope_theta": 500.0}


@pytest.mark.parametrize("rope_interleave", [True, False])
@pytest.mark.parametrize("rope_parameters", [YARN, DEFAULT], ids=["yarn", "default"])
@pytest.mark.parametrize("dq", [None, 5])
def test_matches_hf_deepseek_v3_attention(rope_interleave, rope_parameters, dq):
    d, b, t = 8, 2, 6
    torch, hf, cfg, attn = _hf_attention(DIMS, d, dq, rope_interleave, dict(rope_parameters))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((b, t, d))
    pos = np.broadcast_to(np.arange(t) + 40, (b, t)).copy()
    xt = torch.from_numpy(x)
    cos, sin = hf.DeepseekV3RotaryEmbedding(cfg).double()(xt, torch.from_numpy(pos))
    mask = torch.full((t, t), -math.inf, dtype=torch.float64).triu(1)[None, None]
    with torch.no_grad():
        want, _ = attn(xt, (cos, sin), mask)
    if rope_parameters["rope_type"] == "yarn":
        scaling = RopeScaling("yarn", factor=8.0, original_max_position=64, attention_factor=1.0)
        extra = dict(theta=10000.0, scaling=scaling, mscale_all_dim=1.0)
    else:
        extra = dict(theta=500.0)
    for form in ("naive", "absorbed"):
        out, _, _ = mla(x, pos, **_weights(attn), **DIMS, **extra, interleaved=rope_interleave,
                        form=form)
        # HF's RMSNorm and rotary angles run in float32 even in a float64 module
        assert_close(out, want.numpy(), rtol=F32_RTOL, atol=F32_RTOL, what=form)


def test_cache_matches_hf_latent_cache():
    """HF caches the normalized latent and the rotated rope key (de-interleaved): ours too."""
    d, b, t = 8, 1, 4
    torch, hf, cfg, attn = _hf_attention(DIMS, d, None, True, dict(DEFAULT))
    from transformers import DynamicCache

    x = np.random.default_rng(2).standard_normal((b, t, d))
    pos = np.arange(t)[None]
    xt = torch.from_numpy(x)
    cos, sin = hf.DeepseekV3RotaryEmbedding(cfg).double()(xt, torch.from_numpy(pos))
    cache = DynamicCache(config=cfg)
    mask = torch.full((t, t), -math.inf, dtype=torch.float64).triu(1)[None, None]
    with torch.no_grad():
        attn(xt, (cos, sin), mask, cache=cache)
    layer = cache.layers[0]
    _, c_kv, k_rope = mla(x, pos, **_weights(attn), **DIMS, theta=500.0)
    assert_close(c_kv, layer.keys[:, 0].numpy(), rtol=F32_RTOL, atol=F32_RTOL)
    assert_close(k_rope, layer.values[:, 0].numpy(), rtol=F32_RTOL, atol=F32_RTOL)


# ----------------------------------------------------------------------------- kv_cache_size


def test_kv_cache_size_reproduces_the_deepseek_v2_table():
    nh, dh, nl, ng = 128, 128, 60, 8
    assert kv_cache_size("mha", n_layers=nl, n_heads=nh, head_dim=dh).elements_per_token == (
        2 * nh * dh * nl)
    assert kv_cache_size("gqa", n_layers=nl, n_heads=nh, head_dim=dh,
                         n_kv_heads=ng).elements_per_token == 2 * ng * dh * nl
    assert kv_cache_size("mqa", n_layers=nl, n_heads=nh, head_dim=dh).elements_per_token == (
        2 * dh * nl)
    # the paper's MLA: d_c = 4 d_h, d_h^R = d_h / 2 -> 4.5 d_h l ("about GQA with 2.25 groups")
    mla_size = kv_cache_size("mla", n_layers=nl, n_heads=nh, head_dim=dh,
                             kv_lora_rank=4 * dh, qk_rope_head_dim=dh // 2)
    assert mla_size.elements_per_token == 4.5 * dh * nl
    assert mla_size.elements_per_token_per_layer == 576  # DeepSeek-V2/V3: 512 + 64


def test_kv_cache_size_hand_values_and_bytes():
    s = kv_cache_size("mla", n_layers=61, n_heads=128, head_dim=128, kv_lora_rank=512,
                      qk_rope_head_dim=64, bytes_per_element=2)
    assert s.bytes_per_token == 576 * 61 * 2 == 70272  # DeepSeek-V3 in bf16: ~68.6 KiB/token
    assert_close(s.bytes_for([0, 1, 1024], batch=2), [0, 2 * 70272, 2 * 1024 * 70272])
    mha = kv_cache_size("mha", n_layers=61, n_heads=128, head_dim=128, bytes_per_element=1)
    assert mha.bytes_per_token == 2 * 128 * 128 * 61
    with pytest.raises(ValueError, match="n_kv_heads"):
        kv_cache_size("gqa", n_layers=1, n_heads=6, head_dim=4, n_kv_heads=4)
    with pytest.raises(ValueError, match="kind"):
        kv_cache_size("mlp", n_layers=1, n_heads=1, head_dim=1)


@pytest.mark.parametrize("dr", (0, 3, -2, None))
def test_kv_cache_size_rejects_the_rope_head_dims_mla_rejects(dr):
    """mla needs an even qk_rope_head_dim >= 2 (the decoupled RoPE key): so does the cache
    table, with the same error (ValueError naming the argument)."""
    with pytest.raises(ValueError, match="qk_rope_head_dim"):
        kv_cache_size("mla", n_layers=1, n_heads=2, head_dim=4, kv_lora_rank=8,
                      qk_rope_head_dim=dr)
