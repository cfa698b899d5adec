"""The JAX mesh training check: ``mesh_train_step`` on meshes of 4 and 8 host devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8, set by the caller before jax loads)
equals the one-device ``train_step``: every new parameter, both moments, the loss and the grad
norm within ``split_gap``'s bound (K x the naive float32 errors of both sides + floors: the
same math, only the order of the float32 sums differs), the token count, the expert loads and
the router biases exactly. A planted step that normalises each data shard by its own token
count (the per-micro-batch mean again, across devices) must be told apart."""

from __future__ import annotations

import importlib
import sys
import time
from unittest import mock

import jax
import numpy as np
from _train_cases import differences, sides
from jax.sharding import Mesh

from lmspec.spec.model import MLAConfig, ModelConfig, MoEConfig, init_params, tensor_parallel_dim
from lmspec.spec.train_step import Schedule, TrainConfig, init_opt_state

TS = importlib.import_module("lmspec.backends.jax_xla.train_step")  # not the function
DEVICES = 8
CONFIGS = {
    "dense": ModelConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2,
                         d_ff=24),
    "deepseek": ModelConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, d_ff=24,
                            mla=MLAConfig(kv_lora_rank=8, qk_nope_head_dim=4,
                                          qk_rope_head_dim=4, v_head_dim=4),
                            moe=MoEConfig(n_experts=4, top_k=2, d_expert=8, first_k_dense=1,
                                          score_func="sigmoid", selection_bias=True,
                                          d_shared=8, balance_coef=0.01)),
}
CASES = (("dense", False), ("deepseek", True))  # (config, weighted batch)
MESHES = {"4 devices (data 2 x model 2)": ((2, 2), ("data", "model")),
          "8 devices (data 4 x model 2)": ((4, 2), ("data", "model"))}


def _batch(config, weighted: bool) -> dict:
    rng = np.random.default_rng(11)
    tok = rng.integers(0, config.vocab_size, (2, 8, 6))  # 2 micro-batches of 8 rows
    tg = np.concatenate([tok[..., 1:], np.full((2, 8, 1), -100)], -1)
    tg[:, :3, :4] = -100  # the data shards hold different token counts
    b = {"tokens": tok, "targets": tg}
    if weighted:
        b["weights"] = rng.choice([-1.5, 0.0, 0.5, 2.0], tok.shape)
    return b


def _mesh_step(mesh, params, opt, batch, step, cfg, tc):
    return TS.mesh_train_step(mesh, params, opt, batch, step, model_config=cfg,
                              train_config=tc,
                              model_axis="model" if "model" in mesh.axis_names else None)


def run(name: str, weighted: bool, meshes: dict) -> list[str]:
    cfg = CONFIGS[name]
    tc = TrainConfig(lr=1e-2, max_grad_norm=0.5, schedule=Schedule("cosine", 2, 10),
                     bias_update_rate=1e-3 if cfg.moe else 0.0, compute_dtype="float32")
    params = {n: a.astype(np.float32) for n, a in init_params(cfg, 3, std=0.3).items()}
    opt = init_opt_state(params, cfg)
    batch, step = _batch(cfg, weighted), 3
    t0 = time.perf_counter()
    one = TS.train_step(params, opt, batch, step, model_config=cfg, train_config=tc)
    naive, ref = sides(params, opt, batch, step, cfg, tc)
    print(f"{name}: one device, reference and naive steps {time.perf_counter() - t0:.1f} s")
    label = f"{name}{' weighted' if weighted else ''}"
    fails = []
    for mesh_name, mesh in meshes.items():
        got = _mesh_step(mesh, params, opt, batch, step, cfg, tc)
        where = f"{label} on {mesh_name}"
        if "model" in mesh.axis_names:  # the plan really split something
            split = [k for k, a in got[0].items()
                     if not a.sharding.is_fully_replicated and tensor_parallel_dim(k, cfg)
                     is not None]
            if not split:
                fails.append(f"{where}: no parameter was split over the model axis")
        fails += [f"{where}: {p}" for p in differences(got, one, naive, ref, cfg)]
        fails += _planted(mesh, where, params, opt, batch, step, cfg, tc, (one, naive, ref))
        print(f"{where}: {time.perf_counter() - t0:.1f} s")
    return fails


def _planted(mesh, where, params, opt, batch, step, cfg, tc, sides) -> list[str]:
    """Each data shard normalised by its share of the token count (the whole count / the
    number of shards: what a per-device mean over equal shards uses) instead of the whole
    batch's count."""
    shards = dict(zip(mesh.axis_names, mesh.devices.shape))["data"]
    real = TS._inputs

    def per_shard(*a, **k):
        arrays, scalars, n, lr = real(*a, **k)
        return arrays, [scalars[0] / shards, *scalars[1:]], n, lr
    with mock.patch.object(TS, "_inputs", per_shard):
        bad = _mesh_step(mesh, params, opt, batch, step, cfg, tc)
    if not differences(bad, *sides, cfg):
        return [f"{where}: the planted per-shard normalisation was not told apart"]
    return []


def _refusals(meshes) -> list[str]:
    """Bad meshes and batches are refused with the argument named."""
    cfg = CONFIGS["dense"]
    params = {n: a.astype(np.float32) for n, a in init_params(cfg, 3).items()}
    opt, tc = init_opt_state(params, cfg), TrainConfig(lr=1e-2)
    mesh = next(iter(meshes.values()))
    bad = {"rows": ({**_batch(cfg, False), "tokens": _batch(cfg, False)["tokens"][:, :3],
                     "targets": _batch(cfg, False)["targets"][:, :3]}, {}, "batch: 3 rows"),
           "data axis": (_batch(cfg, False), {"data_axis": "dp"}, "data_axis: 'dp'"),
           "model axis": (_batch(cfg, False), {"model_axis": "tp"}, "model_axis: 'tp'")}
    out = []
    for what, (batch, kw, want) in bad.items():
        try:
            TS.mesh_train_step(mesh, params, opt, batch, 0, model_config=cfg, train_config=tc,
                               **kw)
            out.append(f"bad {what}: not refused")
        except ValueError as e:
            if want not in str(e):
                out.append(f"bad {what}: {e} (expected it to name {want!r})")
    return out


def main() -> int:
    assert jax.device_count() == DEVICES, f"expected {DEVICES} host devices, {jax.devices()}"
    devices = np.array(jax.devices())
    meshes = {name: Mesh(devices[:int(np.prod(shape))].reshape(shape), axes)
              for name, (shape, axes) in MESHES.items()}
    fails = [f for n, w in CASES for f in run(n, w, meshes)] + _refusals(meshes)
    print("\n".join(f"FAIL {f}" for f in fails) or f"OK {len(CASES)} cases x "
          f"{len(meshes)} meshes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
