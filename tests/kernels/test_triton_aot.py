"""Every Triton kernel compiles for a GPU (sm_90) at the launch configurations its launcher
chooses there, without a GPU (backends/torch_triton/_aot.py), and the check can fail: a
compile error, and tiles that need more shared memory than the part has, are caught. Each
run is a process of its own: the kernels must be JIT functions, not the interpreter's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")
pytest.importorskip("torch")

ENV = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}


def test_every_kernel_compiles_and_fits_on_sm90(tmp_path):
    """Through the command line (`lmspec triton-aot`), which starts the compiling process."""
    out = tmp_path / "triton_aot.jsonl"
    proc = subprocess.run([sys.executable, "-m", "lmspec.conformance.cli", "triton-aot",
                           "--arch", "90", "--results", str(tmp_path)],
                          env={**ENV, "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["ok"] and r["registers"] for r in rows), rows
    from lmspec.reports import triton_aot

    md, _ = triton_aot.section(tmp_path, [])
    assert f"{len(rows)} of {len(rows)} kernel launches compiled and fit" in md


PLANTS = textwrap.dedent("""
    import dataclasses, json
    from lmspec.backends.torch_triton import _aot
    fwd = next(x for x in _aot.record(["sdpa"]) if x.kernel == "_sdpa_fwd_kernel")
    def with_(launch, **flags):
        return dataclasses.replace(launch, constexprs=tuple(
            (k, flags.get(k, v)) for k, v in launch.constexprs))
    # a head dim of 96 without the launcher's padding to a power of two (tl.arange needs one)
    rows = [_aot.compile_launch(with_(fwd, BLOCK_D=96, BLOCK_DV=96), 90)]
    # a part with less shared memory per block than these tiles take (32 KiB on sm_90)
    _aot.SHARED_LIMIT[90] = 16 * 1024
    rows.append(_aot.compile_launch(fwd, 90))
    print(json.dumps(rows))
""")


def test_a_compile_error_and_too_little_shared_memory_fail():
    proc = subprocess.run([sys.executable, "-c", PLANTS], env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    unpadded, too_big = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not unpadded["ok"] and "registers" not in unpadded and unpadded["error"], unpadded
    assert not too_big["ok"] and "shared memory" in too_big["error"], too_big
