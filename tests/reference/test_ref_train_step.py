"""The reference training step against hand-derived values, torch.optim.AdamW (with
clip_grad_norm_) and optax.adamw, and the accumulation identities (1x8 == 8x1 == 2x4)."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

from lmspec.spec import model as M
from lmspec.spec import train_step as TS

RT = importlib.import_module("lmspec.reference.train_step")


def test_schedules_by_hand():
    s = TS.Schedule("cosine", warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [TS.lr_at(i, 1.0, s) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert TS.lr_at(4, 1.0, s) == 1.0  # p = 0
    assert math.isclose(TS.lr_at(9, 1.0, s), 0.1 + 0.9 * 0.5)  # p = 1/2: halfway
    assert math.isclose(TS.lr_at(14, 1.0, s), 0.1) and TS.lr_at(99, 1.0, s) == TS.lr_at(14, 1.0, s)
    w = TS.Schedule("wsd", warmup_steps=2, total_steps=10, min_lr_ratio=0.0, decay_steps=4)
    got = [TS.lr_at(i, 2.0, w) for i in range(10)]
    assert got == [1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.5, 1.0, 0.5, 0.0]
    q = TS.Schedule("wsd", 0, 4, 0.0, decay_steps=4, decay_shape="sqrt")
    assert math.isclose(TS.lr_at(0, 1.0, q), 1 - math.sqrt(0.25))
    assert TS.lr_at(0, 3e-4, TS.Schedule()) == 3e-4
    with pytest.raises(ValueError, match="schedule.total_steps"):
        TS.Schedule("cosine", warmup_steps=5, total_steps=5)
    with pytest.raises(ValueError, match="schedule.decay_steps"):
        TS.Schedule("wsd", total_steps=5)


def _tiny(**kw):
    cfg = M.ModelConfig(vocab_size=11, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=6,
                        **kw)
    return cfg, M.init_params(cfg, 0, std=0.5, norm_std=0.3)


def test_first_step_by_hand():
    """Step 0 with zero moments: m = (1 - b1) g, v = (1 - b2) g^2, and the update is
    lr g / (|g| + eps) after decoupled decay, on decayed names only."""
    cfg, p = _tiny()
    tc = TS.TrainConfig(lr=0.01, weight_decay=0.5, max_grad_norm=None, eps=1e-3)
    rng = np.random.default_rng(0)
    g = {n: rng.standard_normal(p[n].shape) for n in M.trainable(cfg)}
    opt = {k: {n: np.zeros_like(p[n]) for n in g} for k in ("m", "v")}
    new_p, new_o, norm, clip, lr = RT.adamw_update(p, opt, g, 0, train_config=tc)
    for n in g:
        wd = 0.5 if M.param_kind(n) == "matrix" else 0.0
        want = p[n] * (1 - 0.01 * wd) - 0.01 * g[n] / (np.abs(g[n]) + 1e-3)
        np.testing.assert_allclose(new_p[n], want, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(new_o["m"][n], 0.1 * g[n], rtol=1e-15)
        np.testing.assert_allclose(new_o["v"][n], 0.05 * g[n] ** 2, rtol=1e-14)
    assert clip == 1.0 and lr == 0.01
    assert math.isclose(norm, math.sqrt(sum(float(np.sum(v * v)) for v in g.values())))


@pytest.mark.parametrize("max_norm", [None, 0.5])
def test_adamw_equals_torch(max_norm):
    """Three steps of torch.optim.AdamW (after clip_grad_norm_), float64, decay on every
    parameter (torch's one param group), a warmup schedule."""
    torch = pytest.importorskip("torch")
    cfg, p = _tiny()
    tc = TS.TrainConfig(lr=0.02, beta1=0.8, beta2=0.9, eps=1e-6, weight_decay=0.3,
                        decay_rule="all", max_grad_norm=max_norm,
                        schedule=TS.Schedule("cosine", 2, 5, 0.1))
    names = M.trainable(cfg)
    tp = {n: torch.tensor(p[n], requires_grad=True) for n in names}
    opt_t = torch.optim.AdamW(list(tp.values()), lr=tc.lr, betas=(0.8, 0.9), eps=1e-6,
                              weight_decay=0.3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt_t, lambda s: TS.lr_at(s, 1.0, tc.schedule))
    opt = {k: {n: np.zeros_like(p[n]) for n in names} for k in ("m", "v")}
    rng = np.random.default_rng(1)
    for step in range(3):
        g = {n: rng.standard_normal(p[n].shape) for n in names}
        for n in names:
            tp[n].grad = torch.tensor(g[n])
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(tp.values()), max_norm)
        opt_t.step()
        sched.step()
        p, opt, *_ = RT.adamw_update(p, opt, g, step, train_config=tc)
        for n in names:
            np.testing.assert_allclose(p[n], tp[n].detach().numpy(), rtol=1e-12, atol=1e-14)
            st = opt_t.state[tp[n]]
            np.testing.assert_allclose(opt["m"][n], st["exp_avg"].numpy(), rtol=1e-12)
            np.testing.assert_allclose(opt["v"][n], st["exp_avg_sq"].numpy(), rtol=1e-12)


def test_adamw_equals_optax_with_eps_root():
    optax = pytest.importorskip("optax")
    jnp = pytest.importorskip("jax.numpy")
    import jax

    cfg, p = _tiny()
    names = M.trainable(cfg)
    tc = TS.TrainConfig(lr=0.01, eps=1e-8, eps_root=1e-6, weight_decay=0.2,
                        decay_rule="matrices", max_grad_norm=None)
    mask = {n: M.param_kind(n) == "matrix" for n in names}
    tx = optax.adamw(0.01, b1=0.9, b2=0.95, eps=1e-8, eps_root=1e-6, weight_decay=0.2,
                     mask=mask)
    with jax.enable_x64(True):
        jp = {n: jnp.asarray(p[n]) for n in names}
        state = tx.init(jp)
        opt = {k: {n: np.zeros_like(p[n]) for n in names} for k in ("m", "v")}
        rng = np.random.default_rng(2)
        for step in range(3):
            g = {n: rng.standard_normal(p[n].shape) for n in names}
            upd, state = tx.update({n: jnp.asarray(g[n]) for n in names}, state, jp)
            jp = optax.apply_updates(jp, upd)
            p, opt, *_ = RT.adamw_update(p, opt, g, step, train_config=tc)
            for n in names:
                np.testing.assert_allclose(p[n], np.asarray(jp[n]), rtol=1e-12, atol=1e-14)


def _batch(tokens, targets, a):
    b = tokens.shape[0] // a
    return {"tokens": tokens.reshape(a, b, -1), "targets": targets.reshape(a, b, -1)}


def test_accumulation_sums_by_the_whole_batch_count():
    """1x8 == 8x1 == 2x4 for every gradient, with micro-batches of very different token
    counts; the mean of per-micro-batch means (the 2024 transformers bug) is not."""
    cfg, p = _tiny()
    rng = np.random.default_rng(3)
    tok = rng.integers(0, 11, (8, 5))
    tg = np.concatenate([tok[:, 1:], np.full((8, 1), -100)], 1)
    tg[:6, :3] = -100  # rows 0-5 hold 1 target each, rows 6-7 hold 4
    out = {a: RT.accumulate(p, _batch(tok, tg, a), model_config=cfg) for a in (1, 2, 8)}
    for a in (2, 8):
        assert math.isclose(out[a][0], out[1][0], rel_tol=1e-12)
        for n, g in out[1][2].items():
            np.testing.assert_allclose(out[a][2][n], g, rtol=1e-10, atol=1e-14)
    from lmspec.reference import model_grad

    per_mean = {n: 0.0 for n in out[1][2]}
    for a in range(2):
        _, _, g = model_grad(p, tok[4 * a:4 * a + 4], tg[4 * a:4 * a + 4], config=cfg)
        per_mean = {n: per_mean[n] + g[n] / 2 for n in per_mean}
    assert max(float(np.max(np.abs(per_mean[n] - out[1][2][n]))) for n in per_mean) > 1e-3


def test_train_step_moe_bias_update_and_metrics():
    moe = M.MoEConfig(n_experts=4, top_k=2, d_expert=3, score_func="sigmoid",
                      selection_bias=True, balance_coef=0.1)
    cfg, p = _tiny(moe=moe)
    rng = np.random.default_rng(4)
    tok = rng.integers(0, 11, (2, 1, 6))
    batch = {"tokens": tok, "targets": np.concatenate([tok[..., 1:], np.full((2, 1, 1), -100)],
                                                      -1)}
    tc = TS.TrainConfig(bias_update_rate=0.01, max_grad_norm=1e-3)
    opt = TS.init_opt_state(p, cfg)
    new_p, new_o, m = RT.train_step(p, opt, batch, 0, model_config=cfg, train_config=tc)
    assert m["n_tokens"] == 10 and m["clip"] < 1 and m["loads"].shape == (2, 4)
    for name, load in zip(TS.moe_bias_names(cfg), m["loads"], strict=True):
        want = p[name] + 0.01 * np.sign(load.sum() - 4 * load)
        np.testing.assert_array_equal(new_p[name], want)
    assert m["loads"].sum(1).tolist() == [12 * 2] * 2  # per MoE layer: 12 tokens, k = 2
    # balance: the mean of the micro-batches' terms, not their sum
    pc = RT.cast(p, tc.compute_dtype)  # the master weights as the model sees them
    one = RT.accumulate(pc, {k: v[:1] for k, v in batch.items()}, model_config=cfg)[1]
    two = RT.accumulate(pc, {k: v[1:] for k, v in batch.items()}, model_config=cfg)[1]
    assert math.isclose(m["balance"], (one["balance"] + two["balance"]) / 2, rel_tol=1e-12)
