"""SDPA reference vs finite differences, hand cases, torch SDPA and a full HF LlamaAttention."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _refcheck import FD_SETTINGS, assert_close, fd_check, rng_case
from hypothesis import given

from lmspec.reference import rope, sdpa, sdpa_vjp, visible
from lmspec.spec import Case, component

STEPS = {"q": 1e-6, "k": 1e-6, "v": 1e-6}


@FD_SETTINGS
@given(component("sdpa").cases())
def test_vjp_matches_finite_differences(case):
    # the random cotangent covers both outputs, lse included (ignored where lse = -inf)
    fd_check("sdpa", case, STEPS)


def _case(b=1, tq=4, tk=4, hq=2, hkv=2, d=4, dv=3, seg=None, mag=1.0, **params) -> Case:
    base = {"causal": False, "window": None, "softcap": None, "scale": None}
    extra = {"segment_ids_q": None, "segment_ids_kv": None}
    if seg is not None:
        extra = {"segment_ids_q": np.array(seg[0]), "segment_ids_kv": np.array(seg[1])}
    return rng_case(
        {"q": (b, tq, hq, d), "k": (b, tk, hkv, d), "v": (b, tk, hkv, dv)},
        {**base, **params},
        scale=mag,
        extra=extra,
    )


EDGE_CASES = {
    "fully masked rows (Tq > Tk causal)": _case(tq=5, tk=2, causal=True),
    "Tq > Tk causal with window": _case(tq=6, tk=4, causal=True, window=2),
    "window": _case(tq=6, tk=6, causal=True, window=3),
    "decode row": _case(tq=1, tk=7, causal=True, window=4),
    "segments": _case(
        b=2, tq=4, tk=5, seg=([[0, 0, 1, 1], [0, 1, 1, 2]], [[0, 0, 1, 1, 1], [0, 0, 1, 1, 1]])
    ),
    "segments + causal": _case(tq=4, tk=4, causal=True, seg=([[0, 0, 1, 1]], [[0, 0, 1, 1]])),
    "softcap": _case(softcap=2.0, mag=3.0),
    "GQA": _case(hq=6, hkv=2, causal=True),
    "MQA + scale": _case(hq=3, hkv=1, mag=2.0, scale=0.3),
    "no keys": _case(tq=3, tk=0),
}


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_vjp_edge_cases(name):
    fd_check("sdpa", EDGE_CASES[name], STEPS)


def test_fully_masked_rows_are_zero_with_zero_gradient():
    # Tq = 3 > Tk = 1: queries sit at positions -2, -1, 0; only the last sees key 0
    c = _case(tq=3, tk=1, causal=True).arrays
    out, lse = sdpa(c["q"], c["k"], c["v"], causal=True)
    assert_close(out[0, :2], np.zeros((2, 2, 3)), atol=0)
    assert np.all(lse[0, :2] == -np.inf)
    assert_close(out[0, 2], c["v"][0, 0], atol=1e-15)  # MHA: head h reads kv head h
    cots = (np.ones(out.shape), np.full(lse.shape, 5.0))  # a cotangent on -inf lse is ignored
    g = sdpa_vjp(cots, c["q"], c["k"], c["v"], causal=True)
    assert_close(g["q"][0, :2], np.zeros((2, 2, 4)), atol=0)
    assert all(np.all(np.isfinite(a)) for a in g.values())


def test_single_visible_key_returns_its_value_and_score():
    # causal, Tq = Tk: query 0 sees only key 0 -> out = v_0, lse = s_00 = q_0 . k_0 / sqrt(D)
    c = _case(tq=3, tk=3, hq=1, hkv=1, d=4).arrays
    out, lse = sdpa(c["q"], c["k"], c["v"], causal=True)
    assert_close(out[0, 0, 0], c["v"][0, 0, 0], rtol=1e-15)
    assert_close(lse[0, 0, 0], c["q"][0, 0, 0] @ c["k"][0, 0, 0] / 2.0, rtol=1e-14)
    # window 1: every query sees only its own key
    out, lse = sdpa(c["q"], c["k"], c["v"], causal=True, window=1)
    assert_close(out, c["v"], rtol=1e-14)
    assert_close(lse[0, :, 0], np.einsum("td,td->t", c["q"][0, :, 0], c["k"][0, :, 0]) / 2.0)


def test_gqa_head_mapping_with_distinguishable_kv_heads():
    # Hkv = 2, Hq = 4 (G = 2): query head h reads kv head h // 2; v of kv head j is 10 (j + 1)
    q, k = np.zeros((1, 1, 4, 2)), np.zeros((1, 3, 2, 2))
    v = np.zeros((1, 3, 2, 1))
    v[:, :, 0], v[:, :, 1] = 10.0, 20.0
    out, lse = sdpa(q, k, v)
    assert_close(out.reshape(-1), [10, 10, 20, 20], rtol=1e-15)  # not [10, 20, 10, 20]
    assert_close(lse, np.full((1, 1, 4), math.log(3)), rtol=1e-15)  # 3 zero scores


def test_uniform_scores_average_the_visible_values():
    # q = 0: every visible score is 0, out = mean of the visible v, lse = ln(count)
    v = np.arange(6.0).reshape(1, 6, 1, 1)
    q, k = np.zeros((1, 6, 1, 2)), np.ones((1, 6, 1, 2))
    out, lse = sdpa(q, k, v, causal=True, window=2)
    # query i (position i) sees keys {i - 1, i}: means [0, 0.5, 1.5, 2.5, 3.5, 4.5]
    assert_close(out.reshape(-1), [0, 0.5, 1.5, 2.5, 3.5, 4.5], rtol=1e-15)
    assert_close(lse.reshape(-1), [0] + [math.log(2)] * 5, atol=1e-15)
    # segments [0, 1] vs [0, 0, 1, 1]: query 0 averages v0, v1; query 1 averages v2, v3
    out, _ = sdpa(q[:, :2], k[:, :4], v[:, :4], np.array([[0, 1]]), np.array([[0, 0, 1, 1]]))
    assert_close(out.reshape(-1), [0.5, 2.5], rtol=1e-15)


def test_softcap_hand_value():
    # scores [100, 0] (q . k = 200 with scale 0.5), softcap 5 -> [5 tanh(20), 0]
    q, k = np.array([[[[10.0]]]]), np.array([[[[20.0]], [[0.0]]]])
    v = np.array([[[[1.0]], [[0.0]]]])
    out, lse = sdpa(q, k, v, softcap=5.0, scale=0.5)
    top = 5 * math.tanh(20.0)
    assert_close(lse.reshape(-1), [math.log(math.exp(top) + 1)], rtol=1e-15)
    assert_close(out.reshape(-1), [math.exp(top) / (math.exp(top) + 1)], rtol=1e-15)


TORCH_CASES = {
    "causal": {"tq": 5, "tk": 5, "causal": True},
    "bottom-right causal, Tq < Tk": {"tq": 3, "tk": 7, "causal": True},
    "window": {"tq": 6, "tk": 6, "causal": True, "window": 2},
    "GQA": {"tq": 4, "tk": 6, "hq": 6, "hkv": 2, "causal": True},
    "MQA + scale": {"tq": 4, "tk": 6, "hq": 3, "hkv": 1, "scale": 0.7},
}


@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_against_torch_sdpa(name):
    torch = pytest.importorskip("torch")
    kw = dict(TORCH_CASES[name])
    scale = kw.pop("scale", None)
    c = _case(b=2, d=8, dv=5, mag=2.0, **kw, scale=scale).arrays
    params = {"causal": kw.get("causal", False), "window": kw.get("window"), "scale": scale}
    tq, tk = c["q"].shape[1], c["k"].shape[1]
    mask = visible(tq, tk, causal=params["causal"], window=params["window"])  # (1, 1, Tq, Tk)
    ts = [torch.tensor(c[n].transpose(0, 2, 1, 3), requires_grad=True) for n in "qkv"]
    out_t = torch.nn.functional.scaled_dot_product_attention(
        *ts, attn_mask=torch.tensor(mask), scale=scale, enable_gqa=True
    )  # (B, Hq, Tq, Dv)
    dout = np.random.default_rng(1).standard_normal(out_t.shape).transpose(0, 2, 1, 3)
    out_t.backward(torch.tensor(dout.transpose(0, 2, 1, 3)))
    out, lse = sdpa(c["q"], c["k"], c["v"], **params)
    assert_close(out, out_t.detach().numpy().transpose(0, 2, 1, 3), rtol=1e-12, atol=1e-13)
    g = sdpa_vjp((dout, np.zeros(lse.shape)), c["q"], c["k"], c["v"], **params)
    for n, t in zip("qkv", ts):
        assert_close(g[n], t.grad.numpy().transpose(0, 2, 1, 3), rtol=1e-11, atol=1e-12, what=n)
    # lse against torch.logsumexp of the masked scores, kv heads repeated as repeat_interleave
    qt, kt = ts[0].detach(), ts[1].detach().repeat_interleave(c["q"].shape[2] // c["k"].shape[2], 1)
    s = qt @ kt.transpose(-1, -2) * (scale or 1 / math.sqrt(8))
    want = torch.logsumexp(s.masked_fill(~torch.tensor(mask), -math.inf), -1)
    assert_close(lse, want.numpy().transpose(0, 2, 1), rtol=1e-13)


def test_llama_attention_against_reference_composition():
    # HF LlamaAttention (eager, GQA, causal) == o_proj(sdpa(rope(q_proj x), rope(k_proj x), v))
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    cfg = LlamaConfig(
        hidden_size=24,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=8,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    cfg._attn_implementation = "eager"
    attn = LlamaAttention(cfg, layer_idx=0).double().eval()
    b, t = 2, 7
    rng = np.random.default_rng(16)
    x = rng.standard_normal((b, t, 24))
    pos = np.stack([np.arange(t), np.arange(t) + 5])  # (B, T): the second row has an offset
    causal = np.triu(np.full((t, t), -np.inf), 1)[None, None]  # additive (1, 1, T, T)
    with torch.no_grad():
        cos, sin = LlamaRotaryEmbedding(cfg)(torch.zeros(1, dtype=torch.float64), torch.tensor(pos))
        want, _ = attn(torch.tensor(x), (cos, sin), attention_mask=torch.tensor(causal))
    w = {n: getattr(attn, f"{n}_proj").weight.detach().numpy() for n in "qkvo"}  # (out, in)
    q = (x @ w["q"].T).reshape(b, t, 6, 8)
    k = (x @ w["k"].T).reshape(b, t, 2, 8)
    v = (x @ w["v"].T).reshape(b, t, 2, 8)
    out, _ = sdpa(rope(q, pos), rope(k, pos), v, causal=True)
    got = out.reshape(b, t, 48) @ w["o"].T
    # HF forms cos/sin from float32 angles: agreement to ~1e-6
    assert_close(got, want.numpy(), rtol=0, atol=2e-6)
