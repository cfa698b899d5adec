"""Benchmark of whole decoder models (spec/model.py): forward and forward+backward of each
backend against HF transformers (LlamaForCausalLM, MixtralForCausalLM) on the same tiny configs
with the same weights (mapped by spec/_checkpoint.py), in float32; tokens/s = N / median_s."""

from __future__ import annotations

import functools
import os
import tempfile
import time
import types

import numpy as np
import pytest

from lmspec.conformance import _bench
from lmspec.spec.model import ModelConfig, MoEConfig, init_params

# Llama-like: D 256, 4 layers, 8 query heads over 2 KV heads (hd 32), SwiGLU 688 (~8/3 D)
DENSE = (ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=172,
                     norm_eps=1e-5, name="dense") if _bench.QUICK else
         ModelConfig(vocab_size=4096, d_model=256, n_layers=4, n_heads=8, n_kv_heads=2,
                     d_ff=688, norm_eps=1e-5, name="dense"))
# Mixtral-like: the same attention, experts top-2 of 8 (of 4 quick). No balance term: HF's
# Mixtral adds none without output_router_logits, so both sides minimize the same CE.
MOE = DENSE.replace(name="moe", moe=MoEConfig(n_experts=4 if _bench.QUICK else 8, top_k=2,
                                              d_expert=DENSE.d_model))
CONFIGS = {"dense": (DENSE, "llama"), "moe": (MOE, "mixtral")}
B, T = (2, 32) if _bench.QUICK else (4, 256)
MODES = ("fwd", "fwd+bwd")
# (label, config name, mode); the label names the tokens of one call, N = B T
SHAPES = [(f"{name}-{mode}-N{B * T}", name, mode) for name in CONFIGS for mode in MODES]
# the same computation before timing it (relative to the largest |value|): float32 against
# float32, measured apart ~1e-6 on logits and loss
RTOL = {"logits": 1e-4, "loss": 1e-4, "grads.lm_head": 1e-3}
COMPILED = ("jax_xla",)  # backends whose first call compiles: its time is a row of its own
PEER = "peer:transformers"


def _data(config: ModelConfig) -> tuple[dict, np.ndarray, np.ndarray]:
    """float32 parameters at the usual init scale (std 0.02), tokens and targets (B, T)."""
    rng = np.random.default_rng(0)
    params = {n: a.astype(np.float32) for n, a in init_params(config, 0).items()}
    tokens = rng.integers(0, config.vocab_size, (B, T)).astype(np.int64)
    targets = rng.integers(0, config.vocab_size, (B, T)).astype(np.int64)
    return params, tokens, targets


@functools.cache
def _hf(name: str) -> types.SimpleNamespace:
    """The HF model of config ``name`` with the same weights (a checkpoint written by
    save_hf_dir, read by from_pretrained: its default sdpa attention and experts), its inputs
    on the torch device, and its logits, loss and head gradient (lmspec's (D, V) layout)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from lmspec.backends._torch_device import torch_device
    from lmspec.spec import _checkpoint as ck

    config, model_type = CONFIGS[name]
    params, tokens, targets = _data(config)
    with tempfile.TemporaryDirectory() as d:
        ck.save_hf_dir(os.path.join(d, name), config, params, model_type)
        model = AutoModelForCausalLM.from_pretrained(os.path.join(d, name),
                                                     dtype=torch.float32)
    hf = types.SimpleNamespace(model=model.to(torch_device()).eval(),
                               tokens=_bench.torch_from_numpy(tokens),
                               targets=_bench.torch_from_numpy(targets))
    hf.logits = _hf_run(hf, "fwd")().cpu().numpy()
    hf.loss = float(_hf_run(hf, "fwd+bwd")().detach())
    hf.grads_lm_head = model.lm_head.weight.grad.T.cpu().numpy()
    return hf


def _hf_run(hf: types.SimpleNamespace, mode: str):
    """HF's forward (no_grad, no KV cache), or forward + CE + loss.backward()."""
    import torch

    m, tokens, targets = hf.model, hf.tokens, hf.targets
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return m(tokens, use_cache=False).logits
        return run

    def run():
        m.zero_grad(set_to_none=True)
        logits = m(tokens, use_cache=False).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        return loss
    return run


def _backend_run(backend, name: str, mode: str):
    """A backend's ``model`` (logits) or ``model_grad`` (loss and every gradient, as a list
    that ``_bench.sync`` waits on) on the same data."""
    stem = "model" if mode == "fwd" else "model_grad"
    if not backend.has(stem):
        pytest.skip(f"not implemented: {backend.name} has no {stem}")
    config, _ = CONFIGS[name]
    params, tokens, targets = _data(config)
    p = {n: backend.asarray(a, "float32") for n, a in params.items()}
    tok, tgt = backend.asarray(tokens, None), backend.asarray(targets, None)
    fn = backend.fn(stem)
    if mode == "fwd":
        return lambda: {"logits": fn(p, tok, config=config)[0]}
    return lambda: dict(zip(("loss", "metrics", "grads"), fn(p, tok, tgt, config=config)))


def _flat(out: dict) -> list:
    return [out[k] for k in ("logits", "loss") if k in out] + list(out.get("grads", {}).values())


def _check_against_hf(backend, out: dict, name: str) -> None:
    """The backend computes what HF does: logits, or loss and the head's gradient."""
    hf = _hf(name)
    got = {"logits": out.get("logits"), "loss": out.get("loss"),
           "grads.lm_head": out.get("grads", {}).get("lm_head")}
    want = {"logits": hf.logits, "loss": hf.loss, "grads.lm_head": hf.grads_lm_head}
    for k, a in got.items():
        if a is None:
            continue
        a = np.asarray(backend.to_numpy(a), np.float64)
        diff, scale = float(np.max(np.abs(a - want[k]))), float(np.max(np.abs(want[k])))
        assert diff <= RTOL[k] * scale, (
            f"{backend.name} {name}: {k} differs from transformers' by {diff:.3g} "
            f"(> {RTOL[k]:g} x {scale:.3g}): not the same computation")


@pytest.fixture(autouse=True)
def _same_threads():
    """torch (ours and HF's) on every core, as XLA's CPU client is by default."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(before)


def _record_compile(benchmark, impl: str, run) -> None:
    """compile_s: the first call (trace, compile, run) less the second (run); a row of its
    own, this test's timing is not a result."""
    took = []
    for _ in range(2):
        t0 = time.perf_counter()
        _bench.sync(_flat(run()))
        took.append(time.perf_counter() - t0)
    benchmark.extra_info["impl"] = impl
    benchmark.extra_info["metrics"] = {"compile_s": took[0] - took[1]}
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def _impls() -> list:
    """Compile-time entries first (pytest runs an impl's shapes before the next impl's, so
    they see each config uncompiled), then every backend with a model, then transformers."""
    chosen = [b for b in _bench.selected_backends() if b.name != "reference" and b.has("model")]
    # the float64 NumPy reference is left out: ~10 s a training step here, and no gate reads it
    params = [pytest.param(("compile", b), id=f"{b.name}-compile")
              for b in chosen if b.name in COMPILED]
    params += [pytest.param(("backend", b), id=b.name) for b in chosen]
    return params + [pytest.param(("peer", None), id=PEER)]


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("impl", _impls())
def test_model(benchmark, impl, shape):
    label, name, mode = shape
    kind, backend = impl
    benchmark.extra_info["tokens"] = B * T
    if kind == "peer":
        _bench.run(benchmark, _hf_run(_hf(name), mode), PEER)
        return
    run = _backend_run(backend, name, mode)
    if kind == "compile":
        _record_compile(benchmark, backend.name, run)
        return
    _check_against_hf(backend, run(), name)  # the first call: jax traces and compiles here
    _bench.run(benchmark, lambda: _flat(run()), backend.name)
