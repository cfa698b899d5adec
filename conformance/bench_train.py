"""Benchmark of one training step (spec/train_step.py: forward, backward, global clipping,
AdamW) of each backend against HF transformers' LlamaForCausalLM with torch.optim.AdamW on the
same tiny config, weights and batch, float32 on CPU; and each backend's MFU against this
machine's float32 matmul peak, measured in the same run. tokens/s = B T / median_s."""

from __future__ import annotations

import functools
import os
import tempfile
import time
import types

import numpy as np
import pytest

from lmspec.conformance import _bench
from lmspec.conformance.bench_model import CONFIGS, _data
from lmspec.spec.model import n_params
from lmspec.spec.train_step import Schedule, TrainConfig, init_opt_state

B, T = (2, 32) if _bench.QUICK else (4, 256)
SHAPE = f"dense-step-N{B * T}"
TC = TrainConfig(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1,
                 decay_rule="all", max_grad_norm=1.0, schedule=Schedule())
PEER = "peer:transformers+AdamW"
COMPILED = ("jax_xla",)


def _batch(config):
    _, tokens, targets = _data(config)
    return {"tokens": tokens[None], "targets": targets[None]}  # one micro-batch (A = 1)


@functools.cache
def _hf() -> types.SimpleNamespace:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from lmspec.backends._torch_device import torch_device
    from lmspec.spec import _checkpoint as ck

    config, model_type = CONFIGS["dense"]
    params, tokens, targets = _data(config)
    with tempfile.TemporaryDirectory() as d:
        ck.save_hf_dir(os.path.join(d, "m"), config, params, model_type)
        model = AutoModelForCausalLM.from_pretrained(os.path.join(d, "m"), dtype=torch.float32)
    model = model.to(torch_device()).train()
    # torch's AdamW with the spec's settings (decay on every parameter: decay_rule "all")
    opt = torch.optim.AdamW(model.parameters(), lr=TC.lr, betas=(TC.beta1, TC.beta2),
                            eps=TC.eps, weight_decay=TC.weight_decay)
    return types.SimpleNamespace(model=model, opt=opt, tokens=_bench.torch_from_numpy(tokens),
                                 targets=_bench.torch_from_numpy(targets))


def _hf_step():
    import torch

    hf = _hf()

    def step():
        hf.opt.zero_grad(set_to_none=True)
        logits = hf.model(hf.tokens, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), hf.targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.model.parameters(), TC.max_grad_norm)
        hf.opt.step()
        return loss
    return step


def _backend_step(backend):
    if not backend.has("train_step"):
        pytest.skip(f"not implemented: {backend.name} has no train_step")
    config, _ = CONFIGS["dense"]
    params, _, _ = _data(config)
    state = {"p": {n: backend.asarray(a, "float32") for n, a in params.items()},
             "o": {k: {n: backend.asarray(a, "float32") for n, a in d.items()}
                   for k, d in init_opt_state(params, config).items()},
             "step": 0}
    batch, fn = _batch(config), backend.fn("train_step")

    def step():
        state["p"], state["o"], m = fn(state["p"], state["o"], batch, state["step"],
                                       model_config=config, train_config=TC)
        state["step"] += 1
        return [m["loss"], *state["p"].values()]
    return step


@pytest.fixture(autouse=True)
def _same_threads():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(before)


def _impls() -> list:
    chosen = [b for b in _bench.selected_backends()
              if b.name != "reference" and b.has("train_step")]
    params = [pytest.param(("compile", b), id=f"{b.name}-compile")
              for b in chosen if b.name in COMPILED]
    params += [pytest.param(("backend", b), id=b.name) for b in chosen]
    return params + [pytest.param(("peer", None), id=PEER)]


@pytest.mark.parametrize("shape", [SHAPE])
@pytest.mark.parametrize("impl", _impls())
def test_train_step(benchmark, impl, shape):
    kind, backend = impl
    benchmark.extra_info["tokens"] = B * T
    if kind == "peer":
        _bench.run(benchmark, _hf_step(), PEER)
        return
    run = _backend_step(backend)
    if kind == "compile":
        took = []
        for _ in range(2):
            t0 = time.perf_counter()
            _bench.sync(run())
            took.append(time.perf_counter() - t0)
        benchmark.extra_info["impl"] = backend.name
        benchmark.extra_info["metrics"] = {"compile_s": took[0] - took[1]}
        benchmark.pedantic(lambda: None, rounds=1, iterations=1)
        return
    _bench.run(benchmark, run, backend.name)


def matmul_peak_flops(n: int = 1024, repeats: int = 8) -> float:
    """This machine's float32 GEMM throughput (FLOP/s): the best of ``repeats`` n x n x n
    torch matmuls on every core, the MFU denominator."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * n ** 3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    _bench.sync(fn())
    return time.perf_counter() - t0


@pytest.mark.parametrize("shape", [SHAPE])
@pytest.mark.parametrize("impl", [p for p in _impls() if p.values[0][0] != "compile"])
def test_train_mfu(benchmark, impl, shape):
    """MFU = 6 N tokens/s / peak (6N: the forward and backward FLOPs per token of the
    matmul parameters, Kaplan et al.; attention's own FLOPs left out), with N the
    parameters less the embedding table (a lookup, no FLOPs) and the peak measured here."""
    kind, backend = impl
    step = _hf_step() if kind == "peer" else _backend_step(backend)
    step()
    median = float(np.median([_timed(step) for _ in range(3 if _bench.QUICK else 6)]))
    peak = matmul_peak_flops(256 if _bench.QUICK else 1024)
    config, _ = CONFIGS["dense"]
    n = n_params(config) - config.vocab_size * config.d_model
    benchmark.extra_info["impl"] = PEER if kind == "peer" else backend.name
    benchmark.extra_info["metrics"] = {"mfu": 6.0 * n * B * T / median / peak,
                                       "peak_gflops": peak / 1e9,
                                       "tokens_per_s": B * T / median}
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
