"""lmspec train --nproc 2: two torchrun processes (gloo), each stepping on half of every step's
micro-batches, give the checkpoints and training metrics of the one-process run bit for bit
(both with one thread per process: torch's CPU kernels round differently by thread count);
bad combinations are refused before anything starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
safetensors = pytest.importorskip("safetensors.numpy")

ARGS = ["--steps", "3", "--warmup", "1", "--no-progress", "--corpus-bytes", "300000",
        "--valid-every", "4", "--batch-size", "2", "--micro-batches", "2", "--seq-len", "32",
        "--eval-every", "3", "--ckpt-every", "3"]


def _train(out, *extra, cache):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMSPEC_TRAIN_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "lmspec.conformance.cli", "train", "--out",
                           str(out), *ARGS, *extra], capture_output=True, text=True, env=env,
                          timeout=300)


def _train_rows(out):
    return [(r["step"], r["metric"], r["value"]) for r in map(json.loads, (
        out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"
        and r["metric"] != "tokens_per_s"]


def test_two_processes_equal_one(tmp_path):
    one, two = _train(tmp_path / "one", cache=tmp_path / "c"), _train(
        tmp_path / "two", "--nproc", "2", cache=tmp_path / "c")
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    assert "data-parallel: 2 processes" in two.stderr
    for f in ("model", "optimizer"):
        a, b = (safetensors.load_file(str(tmp_path / d / "step-00000003" / f"{f}.safetensors"))
                for d in ("one", "two"))
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(a[k], b[k]), f"{f}: {k} differs"
    assert _train_rows(tmp_path / "one") == _train_rows(tmp_path / "two")


@pytest.mark.parametrize("bad, msg", [
    (["--nproc", "2", "--micro-batches", "3"], "micro_batches: expected a multiple"),
    (["--nproc", "2", "--backend", "reference"], "backend: data-parallel"),
    (["--nproc", "0"], "--nproc: expected >= 1")])
def test_bad_combinations_are_refused(tmp_path, capsys, bad, msg):
    from lmspec.conformance.cli import main

    assert main(["train", "--out", str(tmp_path / "x"), *ARGS, *bad]) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
