"""Shared machinery of the benchmarks (bench_<stem>.py): implementations to time, the same
inputs for all of them, and the gates, stated as ratios measured in the same run."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from lmspec import backends
from lmspec.conformance._check import Target, to_native

QUICK = os.environ.get("LMSPEC_BENCH_QUICK") == "1"


@dataclass(frozen=True)
class Gate:
    """``impl`` must be at least ``min_ratio`` times as fast as ``baseline`` on ``component``."""

    component: str
    impl: str
    baseline: str  # "reference", a peer name, or "impl:<label>": another impl of ours
    min_ratio: float
    shape: str | None = None  # only at this shape label (None: every shape)
    reason: str = ""


GATES = (
    Gate("sdpa", "torch_triton", "reference", 10.0, "T1024", "issue 2: >= 10x the reference"),
    Gate("sdpa", "jax_xla", "reference", 10.0, "T1024", "issue 2: >= 10x the reference"),
    Gate("sdpa", "torch_triton", "peer:torch.sdpa", 0.8, None, "no slower than 0.8x its peer"),
    Gate("sdpa", "jax_xla", "peer:jax.nn.dpa", 0.8, None, "no slower than 0.8x its peer"),
    Gate("rms_norm", "torch_triton", "peer:F.rms_norm", 0.8, None, "no slower than 0.8x its peer"),
    Gate("rms_norm", "jax_xla", "peer:jnp", 0.8, None, "no slower than 0.8x its peer"),
    Gate("cross_entropy", "torch_triton", "peer:F.cross_entropy", 0.8, None,
         "no slower than 0.8x its peer"),
    Gate("cross_entropy", "jax_xla", "peer:jnp", 0.8, None, "no slower than 0.8x its peer"),
    Gate("linear_attention", "chunked/torch_triton", "impl:sdpa/torch_triton", 3.0, "T16384",
         "issue 4: chunked linear attention >= 3x our causal sdpa at T=16384"),
    Gate("mla", "torch_triton/absorbed", "impl:torch_triton/naive", 2.0, "ctx4096",
         "issue 4: absorbed MLA decode >= 2x the naive form at 4k context"),
    Gate("quant_matmul", "torch_triton/w8a8", "peer:torch.mm.f32", 1.0, "M256xK4096",
         "issue 6: the int8 matmul path no slower than the float32 matmul at 4096x4096"),
    Gate("moe_layer", "torch_triton", "impl:loop", 3.0, "N2048",
         "issue 5: grouped dispatch >= 3x the per-expert loop (64 experts, top-8)"),
    Gate("tokenizer", "bpe_fast", "reference", 5.0, None,
         "issue 3: our fast encoder >= 5x the reference (the serving gate, fastest conforming "
         "backend >= tiktoken, needs conformance rows: lmspec.reports.tokenizer computes it)"),
    Gate("bpe_train", "bpe_fast", "reference", 20.0, "1MiB-v4096",
         "issue 3: our fast trainer >= 20x the reference trainer at vocab 4096 on 1 MB"),
    Gate("model", "torch_triton", "peer:transformers", 1.0, "dense-fwd-N1024",
         "whole models: no slower than HF's LlamaForCausalLM on the dense config (goal 1.3x)"),
    Gate("model", "torch_triton", "peer:transformers", 1.0, "dense-fwd+bwd-N1024",
         "whole models: a training step no slower than HF's (goal 1.3x)"),
    Gate("train_step", "torch_triton", "peer:transformers+AdamW", 1.2, "dense-step-N1024",
         "training: a step (fwd, bwd, clip, AdamW) >= 1.2x HF's LlamaForCausalLM + "
         "torch.optim.AdamW"),
)


def selected_backends() -> list[backends.Backend]:
    """$LMSPEC_BENCH_BACKENDS (comma-separated) or every installed backend but peers."""
    names = [n for n in os.environ.get("LMSPEC_BENCH_BACKENDS", "").split(",") if n]
    explicit = bool(names)
    names = names or [n for n in backends.available() if n not in ("peers", "triton_interpret")]
    if "reference" not in names:
        names.insert(0, "reference")
    out = []
    for n in names:
        try:
            out.append(backends.load(n))
        except backends.BackendUnavailable:
            if explicit:
                raise
    return out


def sync(x: Any) -> Any:
    """Wait for asynchronous results (JAX dispatch, CUDA) so the timing is real."""
    for leaf in x if isinstance(x, (tuple, list)) else (x,):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
        elif hasattr(leaf, "is_cuda") and leaf.is_cuda:
            import torch

            torch.cuda.synchronize()
    return x


def backend_callable(backend: backends.Backend, stem: str, arrays: dict, params: dict,
                     dtype: str = "float32") -> Callable[[], Any]:
    if not backend.has(stem):
        pytest.skip(f"not implemented: {backend.name} has no {stem}")
    if backend.name == "reference":
        dtype = "float64"  # the oracle, as users run it
    target = Target(backend, dtype)
    native = to_native(target, stem, arrays)
    fn = backend.fn(stem)
    return lambda: sync(fn(**native, **params))


def run(benchmark, fn: Callable[[], Any], impl: str, slow: bool = False) -> None:
    fn()  # warm-up: compile (jit), allocate
    rounds = 2 if (slow or QUICK) else 8
    benchmark.extra_info["impl"] = impl
    benchmark.pedantic(lambda: sync(fn()), rounds=rounds, iterations=1, warmup_rounds=0)


def torch_from_numpy(a):
    """A peer's input: torch.from_numpy on the device the torch backends use (a GPU when there
    is one), so that a peer and our backend are timed on the same device."""
    import torch

    from lmspec.backends._torch_device import torch_device

    return torch.from_numpy(a).to(torch_device())


def time_impl(benchmark, impl: tuple, stem: str, arrays: dict, params: dict) -> None:
    """Time one pytest param of ``impl_params``: a backend's ``stem`` or a peer's callable."""
    kind, what = impl
    if kind == "backend":
        fn = backend_callable(what, stem, arrays, params)
        run(benchmark, fn, what.name, slow=what.name == "reference")
    else:
        name, make = what
        run(benchmark, make(arrays), name)


def impl_params(peers: dict[str, Callable[[], Any] | None]) -> list:
    """pytest params: every selected backend, then the peers whose library is installed."""
    params = [pytest.param(("backend", b), id=b.name) for b in selected_backends()]
    params += [pytest.param(("peer", (name, make)), id=name) for name, make in peers.items()]
    return params


def rng_arrays(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s) for n, s in shapes.items()}


# The end of a peak-memory child (see peak_growth): ``call`` defined, run once to warm up, the
# peak resident set reset, run again, the growth of the peak printed as JSON.
PEAK_TAIL = r"""
def status(key):  # kB figures of /proc/self/status
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
call()  # warm-up: kernels, jit, thread pools; its buffers are freed
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # Linux: reset the peak RSS (VmHWM) to the current RSS
before = status("VmRSS")
out = call()
print(json.dumps({"peak_bytes": status("VmHWM") - before}))
"""


def peak_growth(code: str, *args: str) -> int:
    """Runs ``code`` (which defines ``call()``; ``PEAK_TAIL`` is appended) in a fresh Python
    process (Linux) with ``args`` as sys.argv[1:], and returns the growth of its peak resident
    set over one ``call()`` after a warm-up: inputs, imports and compilation excluded."""
    import json
    import subprocess
    import sys

    # a fixed mmap threshold: glibc then returns every large freed buffer to the system at once,
    # so the warm-up call's buffers cannot hide inside the measured call's resident set
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, "-c", code + PEAK_TAIL, *args], capture_output=True,
                          text=True, timeout=600, env=env)
    if proc.returncode:
        pytest.fail(f"{' '.join(args)}: {proc.stderr[-2000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])
