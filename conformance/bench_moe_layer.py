"""Benchmark of the MoE layer at a fine-grained shape (DeepSeekMoE-like: 64 experts, top-8,
narrow experts): each backend's grouped dispatch vs a plain per-expert loop and HF's block."""

from __future__ import annotations

import numpy as np
import pytest

from lmspec.conformance import _bench

# (label, N tokens, D width, E experts, k slots, F expert width)
SHAPES = ([("N256", 256, 128, 16, 4, 64)] if _bench.QUICK
          else [("N2048", 2048, 512, 64, 8, 128)])


def _arrays(n: int, d: int, e: int, k: int, f: int) -> dict:
    rng = np.random.default_rng(0)
    ids = np.argsort(rng.standard_normal((n, e)), axis=1)[:, :k]  # distinct, as a router's
    w = rng.uniform(0.0, 1.0, (n, k))
    return {"x": rng.standard_normal((n, d)), "topk_ids": ids.astype(np.int64),
            "topk_weights": w / w.sum(1, keepdims=True),
            "w_gate": rng.standard_normal((e, d, f)) / np.sqrt(d),
            "w_up": rng.standard_normal((e, d, f)) / np.sqrt(d),
            "w_down": rng.standard_normal((e, f, d)) / np.sqrt(f), "shared_w_gate": None,
            "shared_w_up": None, "shared_w_down": None, "shared_gate": None}


def _torch(arrays):
    pytest.importorskip("torch")
    return {n: None if a is None else _bench.torch_from_numpy(
        a if a.dtype.kind == "i" else a.astype(np.float32)) for n, a in arrays.items()}


def _loop(arrays):
    """The per-expert loop (the reference's form, and HF's block): each expert gathers the
    tokens that chose it, runs on them, and adds its output back weighted."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    t = _torch(arrays)
    x, ids, w = t["x"], t["topk_ids"], t["topk_weights"]

    def run():
        out = torch.zeros_like(x)
        for e in range(t["w_gate"].shape[0]):
            tok, slot = torch.where(ids == e)
            if tok.numel():
                h = x[tok]
                y = (F.silu(h @ t["w_gate"][e]) * (h @ t["w_up"][e])) @ t["w_down"][e]
                out.index_add_(0, tok, y * w[tok, slot, None])
        return out
    return run


def _dense_masked(arrays):
    """Every expert on every token, masked by its combine weight: E/k times the work; shown
    for scale, no gate reads it."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    t = _torch(arrays)
    x, ids, w = t["x"], t["topk_ids"], t["topk_weights"]

    def run():
        out = torch.zeros_like(x)
        for e in range(t["w_gate"].shape[0]):
            weight = (w * (ids == e)).sum(1, keepdim=True)  # (N, 1)
            out += weight * ((F.silu(x @ t["w_gate"][e]) * (x @ t["w_up"][e])) @ t["w_down"][e])
        return out
    return run


def _hf_mixtral_experts(arrays):
    """HF transformers' MixtralExperts (a loop over the hit experts, torch.where + index_add)
    with the same weights in its layout: gate_up_proj (E, 2F, D), down_proj (E, D, F)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts

    t = _torch(arrays)
    e, d, f = t["w_gate"].shape
    experts = MixtralExperts(MixtralConfig(hidden_size=d, intermediate_size=f,
                                           num_local_experts=e)).to(t["x"].device)
    with torch.no_grad():
        experts.gate_up_proj.copy_(torch.cat([t["w_gate"], t["w_up"]], 2).transpose(1, 2))
        experts.down_proj.copy_(t["w_down"].transpose(1, 2))

    def run():
        with torch.no_grad():
            return experts(t["x"], t["topk_ids"], t["topk_weights"])
    return run


def _impls() -> list:
    """Every selected backend that has moe_layer, the loop, HF's experts."""
    params = _bench.impl_params({"loop": _loop, "dense-masked": _dense_masked,
                                 "peer:hf.MixtralExperts": _hf_mixtral_experts})
    return [p for p in params if p.values[0][0] != "backend" or p.values[0][1].has("moe_layer")]


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("impl", _impls())
def test_moe_layer(benchmark, impl, shape):
    label, n, d, e, k, f = shape
    arrays = _arrays(n, d, e, k, f)
    benchmark.extra_info["tokens"] = n
    _bench.time_impl(benchmark, impl, "moe_layer", arrays, {"capacity_factor": None})
