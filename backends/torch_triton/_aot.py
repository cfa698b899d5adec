"""Ahead-of-time compilation of every Triton kernel, for a GPU, on a machine without one.

The Triton interpreter checks what a kernel computes, not whether it compiles: a ``tl.dot``
smaller than 16, a tile that needs more shared memory than an SM has, a construct the GPU
backend rejects, all pass in the interpreter. This module runs the torch_triton backend's own
launchers on CPU tensors that claim to be CUDA tensors (``Tensor.is_cuda`` patched), so that
they choose the tiles and flags they choose on a GPU; each launch is recorded instead of run
(outputs stay garbage, nothing reads them); then every distinct launch is compiled by Triton
to a cubin for a given architecture (Triton ships ``ptxas``), and ``cuobjdump -res-usage``
reads the registers, spills (local memory) and shared memory per thread block from it.

What it proves: the kernels compile for the architecture at the launch configurations of the
workloads below (realistic shapes, forward and backward) and fit its shared memory. What it
does not: speed, or that the compiled code computes the right thing (the interpreter checks
the same source; a GPU run is still the proof).

Run it in a process of its own (triton must not be imported in interpreter mode):
``lmspec triton-aot --arch 90 --arch 80`` (rows to results/triton_aot.jsonl, shown by the
report), or ``python -m lmspec.backends.torch_triton._aot``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# shared memory per thread block (opt-in maximum), bytes: CUDA programming guide, table of
# technical specifications per compute capability
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}


@dataclass(frozen=True)
class Launch:
    """One kernel launch as compiled: the kernel, its argument types, constexprs, options."""
    module: str
    kernel: str
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    options: tuple[tuple[str, int], ...]
    workload: str = field(compare=False, hash=False)

    def describe(self) -> str:
        flags = ",".join(f"{k}={v}" for k, v in self.constexprs)
        types = sorted({t for _, t in self.signature if t.startswith("*")})
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        return f"{flags} [{'/'.join(types)}]" + (f" {opts}" if opts else "")


_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64",
          "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8",
          "bool": "i1"}


def _arg_type(value) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return "*" + _TYPES[str(value.dtype).removeprefix("torch.")]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"a kernel argument of type {type(value).__name__}: no Triton type for it")


@contextlib.contextmanager
def recording(workload: str, into: list[Launch]) -> Iterator[None]:
    """Within: CPU tensors say they are CUDA tensors, and Triton launches are recorded."""
    import torch
    from triton.runtime.jit import JITFunction

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("aot: TRITON_INTERPRET is set: run this in a process of its own "
                           "(python -m lmspec.backends.torch_triton._aot)")

    def run(self, *args, grid, warmup, **kwargs):
        names = self.arg_names
        bound = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
        options = tuple(sorted((k, v) for k, v in kwargs.items()
                               if k in ("num_warps", "num_stages")))
        constexpr_names = {names[i] for i in self.constexprs}
        sig, const = [], []
        for name in names:
            value = bound[name]
            if name in constexpr_names or value is None:
                sig.append((name, "constexpr"))
                const.append((name, value))
            else:
                sig.append((name, _arg_type(value)))
        into.append(Launch(self.fn.__module__, self.fn.__name__, tuple(sig), tuple(const),
                           options, workload))

    saved_run, saved_is_cuda = JITFunction.run, torch.Tensor.is_cuda
    JITFunction.run = run
    torch.Tensor.is_cuda = property(lambda self: True)
    try:
        yield
    finally:
        JITFunction.run, torch.Tensor.is_cuda = saved_run, saved_is_cuda


def _grad(out, *inputs) -> None:
    """Run the backward (its launches are what we want), ignoring what it computes."""
    import torch

    outs = out if isinstance(out, tuple) else (out,)
    loss = sum(o.float().sum() for o in outs if o.dtype.is_floating_point)
    torch.autograd.grad(loss, [i for i in inputs if i.requires_grad], allow_unused=True)


def _workloads() -> dict[str, Callable[[], None]]:
    """Name -> a call of the torch_triton backend at a GPU-sized shape, forward and backward."""
    import numpy as np
    import torch

    from lmspec import reference as R
    from lmspec.backends import torch_triton as T

    bf16 = torch.bfloat16

    def p(*shape, dtype=bf16):
        return torch.randn(*shape, dtype=dtype, requires_grad=dtype.is_floating_point)

    def rms_norm():
        for dtype in (bf16, torch.float32):
            x, w = p(4096, 4096, dtype=dtype), p(4096, dtype=dtype)
            _grad(T.rms_norm(x, w, eps=1e-6), x, w)

    def rope():
        pos = torch.arange(2048).expand(1, 2048)
        for interleaved in (False, True):
            x = p(1, 2048, 32, 128)
            _grad(T.rope(x, pos, interleaved=interleaved), x)

    def swiglu():
        x, wg, wu, wd = p(2048, 1024), p(1024, 2816), p(1024, 2816), p(2816, 1024)
        _grad(T.swiglu(x, wg, wu, wd), x, wg, wu, wd)

    def cross_entropy():
        logits, t = p(256, 128256), torch.randint(0, 128256, (256,))
        _grad(T.cross_entropy(logits, t, label_smoothing=0.1, z_loss=1e-4), logits)

    def sdpa():
        seg = torch.zeros(2, 1024, dtype=torch.int32)
        for d, kw in ((128, dict(causal=True)), (64, dict(causal=True, window=256, softcap=30.0)),
                      (128, dict())):
            q, k, v = p(2, 1024, 16, d), p(2, 1024, 4, d), p(2, 1024, 4, d)
            segs = (seg, seg) if kw.get("window") else ()
            _grad(T.sdpa(q, k, v, *segs, **kw), q, k, v)

    def linear_attention():
        for fmap, decay in (("identity", True), ("elu1", False)):
            q, k, v = p(1, 2048, 8, 64), p(1, 2048, 8, 64), p(1, 2048, 8, 64)
            ld = -torch.rand(8) if decay else None
            T.linear_attention(q, k, v, ld, feature_map=fmap, form="chunked", chunk_size=64)

    def lightning_attention():
        q, k, v = p(1, 2048, 8, 64), p(1, 2048, 8, 64), p(1, 2048, 8, 64)
        T.lightning_attention(q, k, v, -torch.rand(8), block_size=64)

    def quant_matmul():
        rng = np.random.default_rng(0)
        w = rng.standard_normal((4096, 4096)) / 64
        packed, scales, zeros = (torch.from_numpy(a) for a in R.quant_int4(w, group_size=128))
        T.quant_matmul(p(16, 4096), packed, scales.to(bf16), zeros, bits=4,
                       group_size=128)
        codes, s = (torch.from_numpy(a) for a in R.quant_int8(w, axis=-1))
        T.quant_matmul(p(16, 4096), codes, s[:, None].to(bf16), bits=8, group_size=4096)

    def moe_layer():
        n, d, e, k, f = 2048, 1024, 64, 8, 512
        ids = torch.from_numpy(np.argsort(np.random.default_rng(0).standard_normal((n, e)),
                                          axis=1)[:, :k].copy())
        for dtype in (bf16, torch.float32):
            x, wg, wu, wd = p(n, d, dtype=dtype), p(e, d, f, dtype=dtype), \
                p(e, d, f, dtype=dtype), p(e, f, d, dtype=dtype)
            w = torch.full((n, k), 1.0 / k, dtype=dtype)
            _grad(T.moe_layer(x, ids, w, wg, wu, wd), x, wg, wu, wd)

    return {f.__name__: f for f in (rms_norm, rope, swiglu, cross_entropy, sdpa,
                                    linear_attention, lightning_attention, quant_matmul,
                                    moe_layer)}


def record(names: list[str] | None = None) -> list[Launch]:
    """The distinct launches of the workloads (all by default), in first-seen order."""
    import torch

    workloads = _workloads()
    unknown = sorted(set(names or ()) - set(workloads))
    if unknown:
        raise ValueError(f"workloads: unknown {unknown}; expected some of {sorted(workloads)}")
    launches: list[Launch] = []
    for name in names or workloads:
        torch.manual_seed(0)
        with recording(name, launches):
            workloads[name]()
    return list(dict.fromkeys(launches))


def kernels_in_package() -> set[tuple[str, str]]:
    """(module, name) of every top-level ``@triton.jit`` kernel (``*_kernel``) we ship."""
    import importlib
    import pkgutil

    from triton.runtime.jit import JITFunction

    from lmspec.backends.torch_triton import kernels

    found = set()
    for info in pkgutil.iter_modules(kernels.__path__):
        mod = importlib.import_module(f"{kernels.__name__}.{info.name}")
        for name, obj in vars(mod).items():
            if isinstance(obj, JITFunction) and name.endswith("_kernel"):
                found.add((mod.__name__, name))
    return found


_RES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def compile_launch(launch: Launch, arch: int) -> dict:
    """Compile one launch to a cubin for ``sm_<arch>``; its resource use as a result row."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(launch.module), launch.kernel)
    row = {"kernel": launch.kernel, "config": launch.describe(), "arch": f"sm_{arch}",
           "workload": launch.workload}
    start = time.perf_counter()
    try:
        src = ASTSource(fn=fn, signature=dict(launch.signature),
                        constexprs=dict(launch.constexprs))
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options=dict(launch.options))
    except Exception as e:  # the row says why; the caller decides what fails
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [""]
        where = lines[0].split(":", 2)[:2] if lines[0].startswith("at ") else []
        msg = f"{type(e).__name__}{' ' + ':'.join(where) if where else ''}: {lines[-1][:240]}"
        return row | {"ok": False, "error": msg,
                      "seconds": time.perf_counter() - start}
    row["seconds"] = time.perf_counter() - start
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    cubin = Path(os.environ.get("TMPDIR", "/tmp")) / f"lmspec-aot-{os.getpid()}.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    try:
        out = subprocess.run([str(cuobjdump), "-res-usage", str(cubin)], capture_output=True,
                             text=True, check=True).stdout
    finally:
        cubin.unlink(missing_ok=True)
    m = _RES.search(out)
    regs, stack, static_shared, local = map(int, m.groups()) if m else (None,) * 4
    shared = max(compiled.metadata.shared, static_shared or 0)
    limit = SHARED_LIMIT.get(arch)
    row |= {"registers": regs, "stack_bytes": stack, "spill_bytes": local,
            "shared_bytes": shared, "shared_limit": limit, "num_warps": compiled.metadata.num_warps}
    fits = limit is None or shared <= limit
    row["ok"] = fits
    if not fits:
        row["error"] = f"needs {shared} bytes of shared memory per block; sm_{arch} has {limit}"
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lmspec.backends.torch_triton._aot",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, action="append",
                    help="compute capability as an integer, e.g. 90 (H100/H200), 80 (A100); "
                         "repeat for several (default: 90)")
    ap.add_argument("--workload", action="append", help="only these workloads (repeat)")
    ap.add_argument("--out", type=Path, help="write the result rows (JSON lines) here "
                                             "(replaced whole)")
    args = ap.parse_args(argv)
    archs = args.arch or [90]
    bad = [a for a in archs if a < 70]
    if bad:
        ap.error(f"--arch: expected a compute capability like 80 or 90, got {bad}")
    launches = record(args.workload)
    missing = kernels_in_package() - {(x.module, x.kernel) for x in launches}
    rows = []
    for i, launch in enumerate(launches):
        for arch in archs:
            row = compile_launch(launch, arch)
            rows.append(row)
            status = "ok" if row["ok"] else "FAIL"
            detail = (f"{row['registers']} regs, {row['spill_bytes']} B spilled, "
                      f"{row['shared_bytes']} B shared" if "registers" in row else row["error"])
            print(f"[{i + 1}/{len(launches)}] sm_{arch} {status} {launch.kernel} "
                  f"{launch.describe()}: {detail} ({row['seconds']:.1f} s)", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
        tmp.replace(args.out)  # atomically: a reader sees the old rows or the new ones
    for module, name in sorted(missing):
        print(f"not launched by any workload: {module}.{name}", file=sys.stderr)
    failed = [r for r in rows if not r["ok"]]
    print(f"{len(rows) - len(failed)} of {len(rows)} compiled and fit; "
          f"{len(missing)} kernels not launched", flush=True)
    return 1 if failed or missing else 0


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        # lmspec.backends chose the interpreter (no GPU here) before this module ran: start
        # again with it off, so that the kernels are the compilable JIT functions
        os.execve(sys.executable, [sys.executable, "-m", "lmspec.backends.torch_triton._aot",
                                   *sys.argv[1:]], {**os.environ, "TRITON_INTERPRET": "0"})
    sys.exit(main())
