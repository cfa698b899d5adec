"""Token embedding in jitted JAX: gather forward, float32 scatter-add backward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lmspec.backends.jax_xla._common import F32, is_tracer
from lmspec.spec.embedding import check_args, check_range


@jax.custom_vjp
def _lookup(ids, table):
    return jnp.take(table, ids, axis=0)  # (..., D)


def _lookup_fwd(ids, table):
    return _lookup(ids, table), (ids, table)


def _lookup_bwd(res, dout):
    # repeated ids accumulate in float32 (a bf16 scatter-add would round at every collision)
    ids, table = res
    v, d = table.shape
    dtable = jnp.zeros((v, d), F32).at[ids.reshape(-1)].add(dout.reshape(-1, d).astype(F32))
    return None, dtable.astype(table.dtype)


_lookup.defvjp(_lookup_fwd, _lookup_bwd)
_embedding = jax.jit(_lookup)


def embedding(ids, table):
    check_args(ids, table)
    if ids.size and not is_tracer(ids):
        # jax clamps out-of-range gathers silently; the spec says IndexError
        host = np.asarray(ids)
        check_range(int(host.min()), int(host.max()), table.shape[0])
    return _embedding(ids, table)
