"""Training past one process or device, on the existing engines: ``lmspec train --nproc N``
runs torchrun processes (gloo here, NCCL on a GPU), each stepping on its share of every step's
micro-batches with torch_triton's ``data_parallel_train_step``; ``lmspec train --mesh
data=D,model=M`` runs jax_xla's ``mesh_train_step`` on a ``jax.sharding.Mesh`` of D x M devices
(host devices on CPU: ``XLA_FLAGS=--xla_force_host_platform_device_count``, which the command
sets before jax loads)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmspec.train.loop import RunConfig

MESH_AXES = ("data", "model")
_HOST_FLAG = "--xla_force_host_platform_device_count"


def data_parallel_problem(backend: str, micro_batches: int, world: int) -> str | None:
    """Why a run cannot be data-parallel over ``world`` processes (None: it can)."""
    if backend != "torch_triton":
        return f"backend: data-parallel training runs on torch_triton, not {backend}"
    if micro_batches % world:
        return (f"micro_batches: expected a multiple of the {world} processes (each takes "
                f"the same number), got {micro_batches}")
    return None


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=2,model=2"`` -> ``{"data": 2, "model": 2}``; a missing axis is 1."""
    axes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, size = part.partition("=")
        if not eq or name not in MESH_AXES or not size.isdigit() or int(size) < 1:
            raise ValueError(f"mesh: expected AXIS=N[,AXIS=N] with axes {MESH_AXES} and "
                             f"N >= 1, got {text!r}")
        if name in axes:
            raise ValueError(f"mesh: axis {name!r} given twice in {text!r}")
        axes[name] = int(size)
    if not axes:
        raise ValueError(f"mesh: expected AXIS=N[,AXIS=N], got {text!r}")
    return {a: axes.get(a, 1) for a in MESH_AXES}


def mesh_problem(backend: str, axes: dict[str, int], batch_size: int) -> str | None:
    """Why a run cannot train on a mesh of ``axes`` (None: it can)."""
    if backend != "jax_xla":
        return f"backend: mesh training runs on jax_xla, not {backend}"
    if batch_size % axes["data"]:
        return (f"batch_size: expected a multiple of the data axis ({axes['data']}: each "
                f"device takes the same number of rows), got {batch_size}")
    return None


def want_host_devices(axes: dict[str, int]) -> None:
    """Ask XLA for enough CPU devices for the mesh; only before jax is imported, and only
    when XLA_FLAGS does not set the count already."""
    flags = os.environ.get("XLA_FLAGS", "")
    if _HOST_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {_HOST_FLAG}={math.prod(axes.values())}".strip()


@dataclass
class MeshStep:
    """The training step on a mesh of the first D x M devices."""

    mesh: object
    model_axis: str | None

    @classmethod
    def build(cls, axes: dict[str, int]) -> MeshStep:
        import jax
        import numpy as np
        from jax.sharding import Mesh

        n, have = math.prod(axes.values()), jax.devices()
        if len(have) < n:
            raise ValueError(
                f"mesh: {n} devices asked for, {len(have)} {have[0].platform} device(s) here "
                f"(on CPU, set XLA_FLAGS={_HOST_FLAG}={n} before jax is imported: lmspec "
                "train --mesh does)")
        devices = np.array(have[:n]).reshape(axes["data"], axes["model"])
        return cls(Mesh(devices, MESH_AXES), "model" if axes["model"] > 1 else None)

    def describe(self) -> str:
        shape = dict(zip(self.mesh.axis_names, self.mesh.devices.shape, strict=True))
        kind = self.mesh.devices.flat[0].platform
        return (f"mesh: data {shape['data']} x model {shape['model']} over "
                f"{self.mesh.devices.size} {kind} device(s)")

    def step(self, params, opt_state, batch, step, **kw):
        from lmspec.backends.jax_xla.train_step import mesh_train_step

        return mesh_train_step(self.mesh, params, opt_state, batch, step,
                               model_axis=self.model_axis, **kw)


@dataclass
class DataParallel:
    """A torchrun process (WORLD_SIZE > 1): every rank draws the same batches in the same order
    and steps on its contiguous share of each batch's micro-batches with torch_triton's
    data_parallel_train_step, so the run equals the one-process run."""

    rank: int
    world: int
    owns_group: bool

    @classmethod
    def from_env(cls, run: RunConfig) -> DataParallel | None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return None
        problem = data_parallel_problem(run.backend, run.micro_batches, world)
        if problem:
            raise ValueError(problem)
        import torch.distributed as dist

        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("gloo")
        return cls(dist.get_rank(), world, owns)

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def step(self, params, opt_state, batch, step, **kw):
        from lmspec.backends.torch_triton.train_step import data_parallel_train_step

        a = batch["tokens"].shape[0] // self.world
        mine = {k: v[self.rank * a:(self.rank + 1) * a] for k, v in batch.items()}
        return data_parallel_train_step(params, opt_state, mine, step, **kw)

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


