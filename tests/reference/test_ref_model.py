"""The model reference against float64 central finite differences (every family, every
parameter), by hand on a one-layer model, and its prefill + decode against the full pass."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given, settings

from lmspec import reference as R
from lmspec.spec import model as M

RM = importlib.import_module("lmspec.reference.model")  # the module (R.model is the function)


def _loss(params, a, cfg):
    return float(R.model_loss(params, a["tokens"], a["targets"], segment_ids=a["segment_ids"],
                              config=cfg)[0])


@pytest.mark.parametrize("family", M.FAMILIES)
def test_backward_equals_finite_differences(family):
    """d loss / d p . u by central differences (h = 1e-6) for a random direction u, per
    parameter; the tolerance is the differences' own truncation and rounding error."""

    @settings(max_examples=6, deadline=None, derandomize=True, database=None)
    @given(case=M.model_cases(family))
    def check(case):
        cfg, a = case.params["config"], case.arrays
        p = M.init_params(cfg, case.params["seed"], std=0.5, norm_std=0.3)
        _, _, grads = R.model_grad(p, a["tokens"], a["targets"], segment_ids=a["segment_ids"],
                                   config=cfg)
        assert set(grads) == set(M.trainable(cfg))
        rng = np.random.default_rng(0)
        for name, g in grads.items():
            u, h = rng.standard_normal(g.shape), 1e-6
            fd = (_loss({**p, name: p[name] + h * u}, a, cfg)
                  - _loss({**p, name: p[name] - h * u}, a, cfg)) / (2 * h)
            an = float(np.sum(g * u))
            assert abs(fd - an) <= 1e-6 * (abs(fd) + abs(an)) + 1e-8, (name, fd, an, cfg)

    check()


def test_one_layer_by_hand():
    """T = 1, one head: attention returns v itself, so the layer is written out in NumPy."""
    cfg = M.ModelConfig(vocab_size=5, d_model=4, n_layers=1, n_heads=1, d_ff=3)
    p = M.init_params(cfg, 3, std=0.7, norm_std=0.3)
    tok = np.array([[2]])

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg.norm_eps) * w

    x = p["embed"][2]
    x = x + (rms(x, p["layers.0.attn_norm"]) @ p["layers.0.attn.wv"]) @ p["layers.0.attn.wo"]
    h = rms(x, p["layers.0.ffn_norm"])
    a = h @ p["layers.0.ffn.w_gate"]
    x = x + (a / (1 + np.exp(-a)) * (h @ p["layers.0.ffn.w_up"])) @ p["layers.0.ffn.w_down"]
    want = rms(x, p["final_norm"]) @ p["lm_head"]
    np.testing.assert_allclose(R.model(p, tok, config=cfg)[0][0, 0], want, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(M.PRESETS))
def test_prefill_then_decode_equals_full_on_presets(name):
    cfg = M.PRESETS[name].replace(n_layers=2, vocab_size=64)
    p = M.init_params(cfg, 1, std=0.1)
    tok = np.random.default_rng(0).integers(0, 64, (2, 7))
    full = R.model(p, tok, config=cfg)[0]
    logits, caches = R.model(p, tok[:, :4], config=cfg, use_cache=True)
    steps = [logits]
    for j in range(4, 7):
        logits, caches = R.model(p, tok[:, j:j + 1], caches=caches, config=cfg)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, rtol=1e-10, atol=1e-12)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="n_kv_heads"):
        M.ModelConfig(vocab_size=5, d_model=4, n_layers=1, n_heads=3, n_kv_heads=2, d_ff=3)
    with pytest.raises(ValueError, match="moe.top_k"):
        M.MoEConfig(n_experts=2, top_k=3, d_expert=2)
    with pytest.raises(ValueError, match="unknown field"):
        M.ModelConfig.from_dict({"vocab_size": 5, "bogus": 1})
    cfg = M.PRESETS["tiny-deepseek"]
    assert M.ModelConfig.from_dict(cfg.to_dict()) == cfg


MTP_CASES = {
    "deepseek": M.ModelConfig(
        vocab_size=9, d_model=6, n_layers=2, n_heads=2, d_ff=5, mtp_depth=2, mtp_loss_weight=1.0,
        mla=M.MLAConfig(kv_lora_rank=3, qk_nope_head_dim=2, qk_rope_head_dim=2, v_head_dim=2,
                        q_lora_rank=3),
        moe=M.MoEConfig(n_experts=4, top_k=2, d_expert=3, d_shared=2, score_func="sigmoid",
                        n_group=2, topk_group=1, selection_bias=True, first_k_dense=1,
                        balance_loss="seq", balance_coef=0.1)),
    "dense-packed": M.ModelConfig(vocab_size=9, d_model=4, n_layers=1, n_heads=2, n_kv_heads=1,
                                  d_ff=3, mtp_depth=1, z_loss=0.1),
}


@pytest.mark.parametrize("name", list(MTP_CASES))
def test_mtp_backward_equals_finite_differences(name):
    cfg = MTP_CASES[name]
    rng = np.random.default_rng(1)
    tok = rng.integers(0, 9, (2, 6))
    a = {"tokens": tok, "targets": np.concatenate([tok[:, 1:], np.full((2, 1), -100)], 1),
         "segment_ids": None if name == "deepseek" else np.array([[0, 0, 0, 1, 1, 1]] * 2)}
    p = M.init_params(cfg, 2, std=0.5, norm_std=0.3)
    loss, metrics, grads = R.model_grad(p, a["tokens"], a["targets"],
                                        segment_ids=a["segment_ids"], config=cfg)
    assert metrics["mtp"] > 0 and {n for n in grads if n.startswith("mtp.")}
    for pname, g in grads.items():
        u, h = rng.standard_normal(g.shape), 1e-6
        fd = (_loss({**p, pname: p[pname] + h * u}, a, cfg)
              - _loss({**p, pname: p[pname] - h * u}, a, cfg)) / (2 * h)
        an = float(np.sum(g * u))
        assert abs(fd - an) <= 1e-6 * (abs(fd) + abs(an)) + 1e-8, (pname, fd, an)
        if pname.startswith("mtp."):
            assert np.any(g != 0), pname  # every module parameter is reached


def test_mtp_targets_and_loss_by_hand():
    """Module k predicts targets[i + k], never across a document; its CE is summed over its
    targets and divided by the main loss's count, weighted by mtp_loss_weight / depth."""
    tg = np.array([[1, 2, 3, 4, 5]])
    seg = np.array([[0, 0, 0, 1, 1]])
    assert RM.mtp_targets(tg, None, 1).tolist() == [[2, 3, 4, 5, -100]]
    assert RM.mtp_targets(tg, seg, 1).tolist() == [[2, 3, -100, 5, -100]]
    assert RM.mtp_targets(tg, seg, 2).tolist() == [[3, -100, -100, -100, -100]]
    cfg = MTP_CASES["dense-packed"].replace(z_loss=0.0, mtp_loss_weight=0.5)
    p = M.init_params(cfg, 0, std=0.5)
    tok = np.array([[3, 1, 4, 1, 5]])
    loss, m = R.model_loss(p, tok, tg, config=cfg)
    base = cfg.replace(mtp_depth=0)
    main = {n: a for n, a in p.items() if not n.startswith("mtp.")}
    loss0, m0 = R.model_loss(main, tok, tg, config=base)
    assert m["ce"] == m0["ce"] and loss0 == m0["ce"]
    # module 0 by hand: h = the main stack's last hidden state
    _, _, _, tape, P, _, recs = RM._forward(p, tok, None, None, None, cfg, mtp=True)
    logits = recs[0]["logits"][0]  # (T, V)
    want_tg = [2, 3, 4, 5]  # positions 0..3 (position 4 has none)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    ce_sum = sum(lse[i] - logits[i, t] for i, t in enumerate(want_tg))
    np.testing.assert_allclose(m["mtp"], 0.5 / 1 * ce_sum / 5, rtol=1e-12)
    np.testing.assert_allclose(loss, m["ce"] + m["mtp"], rtol=1e-12)
    assert recs[0]["tokens"].tolist() == [[1, 4, 1, 5, 0]]
    # weight 0: the loss is the model's without MTP
    assert R.model_loss(p, tok, tg, config=cfg.replace(mtp_loss_weight=0.0))[0] == loss0


def test_weighted_backward_equals_finite_differences():
    """Per-target weights (negative, zero, positive) with z-loss and MTP: the hand-written
    backward against central differences of the weighted loss; all-ones weights are the
    unweighted loss."""
    cfg = MTP_CASES["dense-packed"]
    rng = np.random.default_rng(3)
    tok = rng.integers(0, 9, (2, 5))
    tg = np.concatenate([tok[:, 1:], np.full((2, 1), -100)], 1)
    w = np.array([[-1.5, 0.0, 2.0, 0.5, 1.0], [1.0, -0.25, 0.0, 3.0, -2.0]])
    p = M.init_params(cfg, 2, std=0.5, norm_std=0.3)

    def loss(q):
        return float(R.model_loss(q, tok, tg, config=cfg, weights=w)[0])

    _, metrics, grads = R.model_grad(p, tok, tg, config=cfg, weights=w)
    assert metrics["ce"] == R.model_loss(p, tok, tg, config=cfg, weights=w)[1]["ce"]
    for pname, g in grads.items():
        u, h = rng.standard_normal(g.shape), 1e-6
        fd = (loss({**p, pname: p[pname] + h * u}) - loss({**p, pname: p[pname] - h * u})) / (
            2 * h)
        an = float(np.sum(g * u))
        assert abs(fd - an) <= 1e-6 * (abs(fd) + abs(an)) + 1e-8, (pname, fd, an)
    ones = R.model_grad(p, tok, tg, config=cfg, weights=np.ones((2, 5)))
    plain = R.model_grad(p, tok, tg, config=cfg)
    np.testing.assert_allclose(ones[0], plain[0], rtol=1e-12)
    for n in plain[2]:
        np.testing.assert_allclose(ones[2][n], plain[2][n], rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="weights"):
        R.model_loss(p, tok, tg, config=cfg, weights=np.ones((2, 4)))
    with pytest.raises(ValueError, match="weights"):
        R.model_loss(p, tok, tg, config=cfg, weights=np.full((2, 5), np.nan))
    with pytest.raises(TypeError, match="weights"):
        R.model_loss(p, tok, tg, config=cfg, weights=np.ones((2, 5), np.int64))
