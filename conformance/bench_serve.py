"""Benchmark of the serving engine (lmspec.serve) against HF transformers' ``generate`` with
static batching, on the same tiny model and a mixed-length workload, float32 on CPU.

The workload: R requests with prompt lengths and output lengths drawn from fixed seeds (16-256
and 8-128 tokens), greedy, EOS ignored so that both sides produce exactly the asked number of
tokens. HF runs them in batches of ``max_num_seqs`` in arrival order, each batch left-padded
and generating until its longest request's count (the static batching a user of
``model.generate`` gets); the engine takes every request at once. Throughput = useful output
tokens / wall time; the engine also reports TTFT and TPOT percentiles."""

from __future__ import annotations

import functools
import os
import tempfile
import time

import numpy as np
import pytest

from lmspec.conformance import _bench
from lmspec.spec._model_config import PRESETS, init_params

CONFIG = PRESETS["tiny-llama"]
R = 8 if _bench.QUICK else 32
MAX_SEQS = 4 if _bench.QUICK else 8
SHAPE = f"mixed-R{R}"


@functools.cache
def workload() -> tuple[list[list[int]], list[int]]:
    rng = np.random.default_rng(0)
    lo, hi = (8, 32) if _bench.QUICK else (16, 256)
    prompts = [list(map(int, rng.integers(0, CONFIG.vocab_size, int(rng.integers(lo, hi)))))
               for _ in range(R)]
    outs = [int(rng.integers(4, 16) if _bench.QUICK else rng.integers(8, 128))
            for _ in range(R)]
    return prompts, outs


@functools.cache
def params():
    return {n: a.astype(np.float32) for n, a in init_params(CONFIG, 0).items()}


def _engine_run(backend: str):
    from lmspec.serve.engine import Engine, SamplingParams

    prompts, outs = workload()

    def run():
        eng = Engine(CONFIG, params(), backend=backend, block_size=16, max_num_seqs=MAX_SEQS,
                     max_tokens_per_step=512, max_model_len=512)
        t0 = time.perf_counter()
        ids = [eng.add_request(p, SamplingParams(max_tokens=m, temperature=0,
                                                 ignore_eos=True))
               for p, m in zip(prompts, outs)]
        first, last, n = {}, {}, {}
        while eng.has_work():
            for o in eng.step():
                now = time.perf_counter() - t0
                first.setdefault(o.request_id, now)
                last[o.request_id] = now
                n[o.request_id] = n.get(o.request_id, 0) + 1
        ttft = [first[i] for i in ids]
        tpot = [(last[i] - first[i]) / max(n[i] - 1, 1) for i in ids]
        return sum(n.values()), ttft, tpot
    return run


@functools.cache
def _hf_model():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from lmspec.spec import _checkpoint as ck

    with tempfile.TemporaryDirectory() as d:
        ck.save_hf_dir(os.path.join(d, "m"), CONFIG, params(), "llama")
        model = AutoModelForCausalLM.from_pretrained(os.path.join(d, "m"), dtype=torch.float32)
    model.generation_config.pad_token_id = 0
    return model.eval()


def _hf_run():
    import torch

    model = _hf_model()
    prompts, outs = workload()

    def run():
        total = 0
        for i in range(0, R, MAX_SEQS):
            ps, ms = prompts[i:i + MAX_SEQS], outs[i:i + MAX_SEQS]
            width = max(map(len, ps))
            ids = torch.zeros((len(ps), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, p in enumerate(ps):  # left padding
                ids[j, width - len(p):] = torch.tensor(p)
                mask[j, width - len(p):] = 1
            with torch.no_grad():
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(ms),
                               min_new_tokens=max(ms), do_sample=False)
            total += sum(ms)  # the useful tokens; the rest of each batch is waste
        return total
    return run


@pytest.fixture(autouse=True)
def _same_threads():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("shape", [SHAPE])
@pytest.mark.parametrize("impl", ["torch_triton", "peer:transformers-generate"])
def test_serve(benchmark, impl, shape):
    benchmark.extra_info["tokens"] = sum(workload()[1])
    if impl.startswith("peer:"):
        _bench.run(benchmark, _hf_run(), impl, slow=True)
    else:
        _bench.run(benchmark, lambda: _engine_run(impl)()[0], impl, slow=True)


@pytest.mark.parametrize("shape", [SHAPE])
def test_serve_latency(benchmark, shape):
    """TTFT and TPOT p50 / p99 of the engine on the workload (all requests arriving at 0)."""
    _, ttft, tpot = _engine_run("torch_triton")()
    benchmark.extra_info["impl"] = "torch_triton"
    benchmark.extra_info["metrics"] = {
        "ttft_p50_s": float(np.percentile(ttft, 50)), "ttft_p99_s": float(np.percentile(ttft, 99)),
        "tpot_p50_s": float(np.percentile(tpot, 50)), "tpot_p99_s": float(np.percentile(tpot, 99))}
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
