"""The model reference against float64 central finite differences (every family, every
parameter), by hand on a one-layer model, and its prefill + decode against the full pass."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from lmspec import reference as R
from lmspec.spec import model as M


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
