"""Distributed results equal single-process results, each run in subprocesses: expert
parallelism (torch.distributed all_to_all, gloo, 4 ranks under torchrun; JAX shard_map on 4
host devices), the torch data-parallel (DDP-style) and FSDP2 training steps (2 and 4 ranks)
and the JAX mesh training step (4 and 8 host devices). XLA_FLAGS must precede the jax import,
hence a subprocess per JAX check. Each worker prints OK or FAIL lines; the expert-parallel ones
judge their gathered output against the float64 reference by the tolerance policy and
require ``kept`` exactly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _run(cmd: list[str], env: dict) -> None:
    env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(
        [str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE, timeout=300)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0 and "FAIL" not in proc.stdout, tail
    assert "OK" in proc.stdout, tail


def _torchrun(worker: str, nproc: int, *args: str) -> None:
    pytest.importorskip("torch")
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun not found")
    _run([torchrun, f"--nproc_per_node={nproc}", "--master_port=0", "--rdzv_backend=c10d",
          "--rdzv_endpoint=localhost:0", str(HERE / worker), *args], {"OMP_NUM_THREADS": "1"})


def test_torch_all_to_all_equals_single_process():
    _torchrun("_ep_torch_worker.py", 4)


@pytest.mark.parametrize("nproc", [2, 4])
def test_torch_data_parallel_step_equals_single_process(nproc):
    """torchrun, 2 and 4 gloo ranks, one micro-batch each: data_parallel_train_step is
    bit-identical to the one-process step (see _dp_torch_worker.py), and a per-rank
    normalisation is not."""
    _torchrun("_dp_torch_worker.py", nproc, "ddp")


@pytest.mark.parametrize("nproc", [2, 4])
def test_torch_fsdp_step_equals_single_process(nproc):
    """torchrun, 2 and 4 gloo ranks, two micro-batches each: fsdp_train_step (FSDP2
    fully_shard, uneven shards of a 31-row embedding) equals the one-process step within
    split_gap's bound; a per-rank normalisation and FSDP's default gradient mean do not."""
    _torchrun("_dp_torch_worker.py", nproc, "fsdp")


def test_jax_shard_map_equals_single_process():
    pytest.importorskip("jax")
    _run([sys.executable, str(HERE / "_ep_jax_worker.py")],
         {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"})


def test_jax_mesh_train_step_equals_one_device():
    """mesh_train_step on (data 2 x model 2) and (data 4 x model 2) meshes of host devices
    equals the one-device step within split_gap's bound, and a per-shard normalisation does
    not (see _mesh_jax_worker.py)."""
    pytest.importorskip("jax")
    _run([sys.executable, str(HERE / "_mesh_jax_worker.py")],
         {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"})
