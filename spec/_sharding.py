"""The tensor / expert-parallel plan over the spec's parameter names: which dimension of each
parameter a model axis splits (read by jax_xla's mesh_train_step)."""

from __future__ import annotations

import functools

from lmspec.spec._model_config import ModelConfig, param_kind, param_shapes

_COLUMN = ("wq", "wk", "wv", "w_uq", "w_ukv", "w_gate", "w_up")  # split along their outputs
_ROW = ("wo", "w_down")  # split along their inputs


def tensor_parallel_dim(name: str, config: ModelConfig) -> int | None:
    """The dimension of parameter ``name`` that a tensor / expert-parallel plan splits, or None
    (replicated): Megatron's column split of the projections into heads and the FFN (``wq``,
    ``wk``, ``wv``, MLA's ``w_uq`` and ``w_ukv``, lightning's ``w_gate``, the FFN's and the
    shared expert's ``w_gate`` and ``w_up``: dim 1) and row split of those that leave them
    (``wo``, ``w_down``: dim 0); the routed experts' ``moe.w_*`` by expert (dim 0: expert
    parallelism); the embedding by vocabulary row (dim 0) and ``lm_head`` by vocabulary column
    (dim 1). Norms, biases, the router, MLA's down-projections and the MTP ``eh_proj`` are
    replicated. A plan that cannot split a dimension evenly replicates it."""
    plan = _plan(config)
    if name not in plan:
        raise ValueError(f"name: {name!r} is not a parameter of this config (see param_shapes)")
    return plan[name]


@functools.cache
def _plan(config: ModelConfig) -> dict[str, int | None]:
    return {n: _dim(n) for n in param_shapes(config)}


def _dim(name: str) -> int | None:
    if name == "embed":
        return 0
    if name == "lm_head":
        return 1
    if param_kind(name) != "matrix":
        return None
    parts = name.split(".")
    last = parts[-1]
    if "moe" in parts and "shared" not in parts and last in ("w_gate", "w_up", "w_down"):
        return 0
    if last in _COLUMN:
        return 1
    if last in _ROW:
        return 0
    return None
