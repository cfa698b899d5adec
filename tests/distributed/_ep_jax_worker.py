"""The JAX expert-parallel check: shard_map over an "expert" mesh axis of 4 host devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4, set by the caller before jax loads)."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
from _ep_cases import CASES, GRADS, RANKS, case, cotangent, grad_verdict, verdict

from lmspec.backends.jax_xla.moe_layer import expert_parallel_moe_layer, moe_layer


def run(name: str, mesh) -> str | None:
    c = case(name)
    a = {n: None if v is None else jnp.asarray(v, jnp.int32 if n == "topk_ids" else jnp.float32)
         for n, v in c.arrays.items()}
    out, kept = expert_parallel_moe_layer(mesh, **a, **c.params)
    single_out, single_kept = moe_layer(**a, **c.params)
    if not np.array_equal(np.asarray(kept), np.asarray(single_kept)):
        return f"{name}: kept differs from the single-process layer"
    rest = {n: v for n, v in a.items() if n not in GRADS}

    def ep_out(*diff):
        return expert_parallel_moe_layer(mesh, **rest, **dict(zip(GRADS, diff)), **c.params)[0]

    _, pull = jax.vjp(ep_out, *(a[n] for n in GRADS))
    grads = dict(zip(GRADS, (np.asarray(g) for g in pull(jnp.asarray(cotangent(name))))))
    return (verdict(name, np.asarray(out), np.asarray(kept))
            or verdict(name, np.asarray(single_out), np.asarray(single_kept))
            or grad_verdict(name, grads))


def main() -> int:
    assert jax.device_count() == RANKS, f"expected {RANKS} host devices, got {jax.devices()}"
    mesh = jax.make_mesh((RANKS,), ("expert",))
    problems = [p for p in (run(name, mesh) for name in CASES) if p]
    for p in problems:
        print(f"FAIL {p}")
    if not problems:
        print(f"OK {len(CASES)} cases")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
