"""MoE layer in jitted JAX: assignments sorted by expert, jax.lax.ragged_dot as the grouped
matmul, a weighted scatter-add combine; capacity by the slot-priority rule; expert parallelism
with shard_map over an "expert" mesh axis."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lmspec.backends.jax_xla._common import F32, HIGHEST, einsum, f32, is_tracer
from lmspec.spec.moe_layer import check_args, check_range, expert_capacity

DIFFERENTIABLE = ("x", "topk_weights", "w_gate", "w_up", "w_down", "shared_w_gate",
                  "shared_w_up", "shared_w_down", "shared_gate")


def kept_mask(topk_ids: jax.Array, n_experts: int, capacity: jax.Array) -> jax.Array:
    """(N, k) bool: rank of each assignment among its expert's in (slot, token) order, by a
    stable sort; ranks below ``capacity`` (a traced int32 scalar) are kept."""
    flat = topk_ids.T.reshape(-1)  # (k*N,) slot-major: the claiming order
    order = jnp.argsort(flat, stable=True)
    counts = jnp.bincount(flat, length=n_experts)
    starts = jnp.cumsum(counts) - counts  # (E,)
    rank = jnp.zeros_like(flat).at[order].set(jnp.arange(flat.size) - starts[flat[order]])
    return (rank < capacity).reshape(topk_ids.shape[1], -1).T


def _ragged(lhs: jax.Array, rhs: jax.Array, sizes: jax.Array) -> jax.Array:
    return lax.ragged_dot(f32(lhs), f32(rhs), sizes, precision=HIGHEST,
                          preferred_element_type=F32)


def grouped_experts(xs, sizes, w_gate, w_up, w_down) -> jax.Array:
    """Rows of xs (M, D) sorted by expert, sizes[e] rows for expert e (rows past the groups:
    zeros): SwiGLU per group by ragged (grouped) products, float32."""
    h = jax.nn.silu(_ragged(xs, w_gate, sizes)) * _ragged(xs, w_up, sizes)  # (M, F)
    return _ragged(h, w_down, sizes)  # (M, D)


def padded_experts(xs, key, rows: int, w_gate, w_up, w_down) -> jax.Array:
    """The same grouped product as ``grouped_experts`` on a (E, rows, D) buffer: each
    expert's rows packed at the front of its own slab (rows >= the largest group), then
    batched matmuls. XLA:CPU lowers ragged_dot as a dense product over every group (about E
    times the work: 5.9 s against 0.04 s for 16384 x 512 x 128 over 64 experts here), so the
    padded form is the fast one off-accelerator. ``key`` (M,) sorted, E for rows to skip."""
    e = w_gate.shape[0]
    counts = jnp.bincount(key, length=e + 1)
    place = jnp.arange(key.size) - (jnp.cumsum(counts) - counts)[key]  # index in its group
    slab = jnp.zeros((e, rows, xs.shape[1]), F32).at[key, place].set(f32(xs), mode="drop")
    h = jax.nn.silu(einsum("ecd,edf->ecf", slab, w_gate)) * einsum("ecd,edf->ecf", slab, w_up)
    y = einsum("ecf,efd->ecd", h, w_down)  # (E, rows, D)
    return y.at[key, place].get(mode="fill", fill_value=0.0)  # skipped rows: zeros


def routed(x, topk_ids, topk_weights, kept, w_gate, w_up, w_down, rows=None) -> jax.Array:
    """Dispatch (sort kept assignments by expert), grouped experts, weighted scatter-add.
    Dropped assignments sort last, past every group (zero rows, zero weight). ``rows``: a
    static bound on the largest group selects the padded batched form; None, ragged_dot."""
    n, k = topk_ids.shape
    e = w_gate.shape[0]
    key = jnp.where(kept, topk_ids, e).reshape(-1)  # dropped assignments sort last
    order = jnp.argsort(key, stable=True)
    tokens = order // k
    if rows is None:
        sizes = jnp.bincount(key, length=e + 1)[:e].astype(jnp.int32)
        ys = grouped_experts(x[tokens], sizes, w_gate, w_up, w_down)  # (N*k, D)
    else:
        ys = padded_experts(x[tokens], key[order], rows, w_gate, w_up, w_down)
    wts = jnp.where(kept, f32(topk_weights), 0.0).reshape(-1)[order]
    return jnp.zeros((n, x.shape[1]), F32).at[tokens].add(wts[:, None] * ys)


def shared_expert(x, shared_w_gate, shared_w_up, shared_w_down, shared_gate) -> jax.Array:
    a = einsum("nd,df->nf", x, shared_w_gate)
    y = einsum("nf,fd->nd", jax.nn.silu(a) * einsum("nd,df->nf", x, shared_w_up), shared_w_down)
    if shared_gate is not None:
        y = jax.nn.sigmoid(einsum("nd,do->no", x, shared_gate)) * y  # (N, 1) gate, Qwen2-MoE
    return y


@functools.partial(jax.jit, static_argnames=("rows",))
def _moe_padded(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate, shared_w_up,
                shared_w_down, shared_gate, capacity, rows):
    """The layer on bucketed shapes (see ``_padded``); id E_pad marks a padding slot."""
    e = w_gate.shape[0]
    kept = kept_mask(topk_ids, e + 1, capacity) & (topk_ids < e)
    out = routed(x, topk_ids, topk_weights, kept, w_gate, w_up, w_down, rows)
    if shared_w_gate is not None:
        out = out + shared_expert(x, shared_w_gate, shared_w_up, shared_w_down, shared_gate)
    return out.astype(x.dtype), kept


def _bucket(size: int, floor: int) -> int:
    return max(floor, 1 << max(size - 1, 0).bit_length())


def _pad(a, shape, value=0):
    """Pad at the end of each axis; on the host (NumPy) outside a trace, so that no op is
    compiled per input shape; nothing at all when the shape is already a bucket."""
    if a is None or tuple(a.shape) == tuple(shape):
        return a
    widths = [(0, t - s) for s, t in zip(a.shape, shape)]
    if is_tracer(a):
        return jnp.pad(a, widths, constant_values=value)
    return jnp.asarray(np.pad(np.asarray(a), widths, constant_values=value))


def _cut(a, shape):
    """The inverse of _pad: the leading ``shape`` block (on the host outside a trace)."""
    if tuple(a.shape) == tuple(shape):
        return a
    index = tuple(slice(0, s) for s in shape)
    return a[index] if is_tracer(a) else jnp.asarray(np.asarray(a)[index])


def _group_rows(topk_ids, n_experts: int, assignments: int) -> int | None:
    """A static bound on the largest expert group (bucketed: few compiles), read from the
    ids on the host; None inside a trace (ragged_dot then)."""
    if is_tracer(topk_ids):
        return None
    ids = np.asarray(topk_ids)
    largest = int(np.bincount(ids.reshape(-1), minlength=n_experts).max()) if ids.size else 0
    return min(assignments, _bucket(largest, 64))


def _padded(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate, shared_w_up,
            shared_w_down, shared_gate, capacity) -> dict:
    """Shapes bucketed to powers of two (at least 16 tokens, 4 slots, 8 experts, widths 8),
    so that jit compiles once per bucket, not once per shape. The padding is exact: zero rows
    and columns add exact zeros (silu(0) * 0 = 0), padded experts get no assignment, padded
    slots point at the extra id E_pad, which claims no capacity of a real expert and is never
    kept. The capacity is a traced scalar for the same reason."""
    (n, d), (k, (e, _, f)) = x.shape, (topk_ids.shape[1], w_gate.shape)
    nb, kb, eb, db, fb = (_bucket(s, m) for s, m in ((n, 16), (k, 4), (e, 8), (d, 8), (f, 8)))
    padded = dict(
        x=_pad(x, (nb, db)), topk_ids=_pad(topk_ids, (nb, kb), eb),
        topk_weights=_pad(topk_weights, (nb, kb)), w_gate=_pad(w_gate, (eb, db, fb)),
        w_up=_pad(w_up, (eb, db, fb)), w_down=_pad(w_down, (eb, fb, db)),
        shared_w_gate=None, shared_w_up=None, shared_w_down=None, shared_gate=None,
        capacity=jnp.asarray(n * k if capacity is None else capacity, jnp.int32),
        rows=_group_rows(topk_ids, e, nb * kb))
    if shared_w_gate is not None:
        fs = _bucket(shared_w_gate.shape[1], 8)
        padded.update(shared_w_gate=_pad(shared_w_gate, (db, fs)),
                      shared_w_up=_pad(shared_w_up, (db, fs)),
                      shared_w_down=_pad(shared_w_down, (fs, db)),
                      shared_gate=_pad(shared_gate, (db, 1)))
    return padded


def moe_layer(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate=None,
              shared_w_up=None, shared_w_down=None, shared_gate=None, *,
              capacity_factor: float | None = None):
    capacity = _checked(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate,
                        shared_w_up, shared_w_down, shared_gate, capacity_factor)
    out, kept = _moe_padded(**_padded(x, topk_ids, topk_weights, w_gate, w_up, w_down,
                                      shared_w_gate, shared_w_up, shared_w_down, shared_gate,
                                      capacity))
    return _cut(out, x.shape), _cut(kept, topk_ids.shape)


def _checked(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate, shared_w_up,
             shared_w_down, shared_gate, capacity_factor) -> int | None:
    """The spec's checks, then the capacity (static for jit)."""
    check_args(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate, shared_w_up,
               shared_w_down, shared_gate, capacity_factor=capacity_factor)
    n, k = topk_ids.shape
    e = w_gate.shape[0]
    if topk_ids.size and not is_tracer(topk_ids):
        host = np.asarray(topk_ids)  # jax clamps out-of-range gathers silently
        check_range(int(host.min()), int(host.max()), e)
    cap = expert_capacity(n, k, e, capacity_factor)
    # no expert can take more than all N*k assignments: a larger capacity (1e9 * N) is the
    # same rule, and must fit the int32 of x64-less JAX
    return None if cap is None else min(cap, n * k)


@functools.partial(jax.jit, static_argnames=("names", "rows"))
def _vjp_padded(dout, diff, rest, names, rows):
    def out_only(*d):
        return _moe_padded(**rest, **dict(zip(names, d)), rows=rows)[0]

    out, pull = jax.vjp(out_only, *diff)
    return pull(dout.astype(out.dtype))  # a cotangent arrives in the tested dtype


def moe_layer_vjp(cotangents, x, topk_ids, topk_weights, w_gate, w_up, w_down,
                  shared_w_gate=None, shared_w_up=None, shared_w_down=None, shared_gate=None, *,
                  capacity_factor: float | None = None):
    """Gradients by a jitted jax.vjp of ``out`` on the bucketed shapes, cut back to the
    inputs' shapes (``kept`` is boolean: it takes no cotangent)."""
    cap = _checked(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate, shared_w_up,
                   shared_w_down, shared_gate, capacity_factor)
    arrays = dict(x=x, topk_weights=topk_weights, w_gate=w_gate, w_up=w_up, w_down=w_down,
                  shared_w_gate=shared_w_gate, shared_w_up=shared_w_up,
                  shared_w_down=shared_w_down, shared_gate=shared_gate)
    padded = _padded(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate,
                     shared_w_up, shared_w_down, shared_gate, cap)
    names = tuple(n for n in DIFFERENTIABLE if arrays[n] is not None)
    rows = padded.pop("rows")
    rest = {n: a for n, a in padded.items() if n not in names}
    dout = cotangents[0] if isinstance(cotangents, (tuple, list)) else cotangents
    dout = _pad(dout.reshape(x.shape), padded["x"].shape)
    grads = _vjp_padded(dout, tuple(padded[n] for n in names), rest, names, rows)
    cut = {n: _cut(g, arrays[n].shape) for n, g in zip(names, grads)}
    return {n: cut.get(n) for n in DIFFERENTIABLE}


# ----------------------------------------------------------------------------- expert parallel


def _ep_local(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared, *, axis: str,
              n_experts: int, capacity_factor):
    """One device's share inside shard_map: x (N_r, D), its routing, experts (E/R, D, F)."""
    world = lax.psum(1, axis)
    me = lax.axis_index(axis)
    n, k = topk_ids.shape
    local = w_gate.shape[0]
    every = lax.all_gather(topk_ids, axis, tiled=True)  # (N, k): capacity is a global rule
    cap = expert_capacity(n * world, k, n_experts, capacity_factor)
    cap = n * world * k if cap is None else min(cap, n * world * k)
    kept = lax.dynamic_slice_in_dim(kept_mask(every, n_experts, jnp.int32(cap)), me * n, n)
    # send buffer (R, M, D): each destination gets up to M = N_r * k rows, kept ones packed
    m = n * k
    ids, keep = topk_ids.reshape(-1), kept.reshape(-1)
    dest = jnp.where(keep, ids // local, world)  # world: not sent
    onehot = jax.nn.one_hot(dest, world + 1, dtype=jnp.int32)  # (M, R + 1)
    slot = (jnp.cumsum(onehot, 0) - onehot)[jnp.arange(m), dest]  # place in its block
    tokens = jnp.arange(m) // k
    send = jnp.zeros((world, m, x.shape[1]), x.dtype).at[dest, slot].set(x[tokens], mode="drop")
    tags = jnp.full((world, m), local, jnp.int32).at[dest, slot].set(ids % local, mode="drop")
    recv = lax.all_to_all(send, axis, 0, 0, tiled=True)  # (R, M, D): block s from device s
    recv_tags = lax.all_to_all(tags, axis, 0, 0, tiled=True).reshape(-1)  # local expert or E/R
    order = jnp.argsort(recv_tags, stable=True)
    sizes = jnp.bincount(recv_tags, length=local + 1)[:local].astype(jnp.int32)
    ys = grouped_experts(recv.reshape(-1, x.shape[1])[order], sizes, w_gate, w_up, w_down)
    ys = jnp.zeros_like(ys).at[order].set(ys).reshape(world, m, -1)  # arrival order
    back = lax.all_to_all(ys, axis, 0, 0, tiled=True)  # (R, M, D): my rows, where I put them
    rows = back[jnp.minimum(dest, world - 1), slot]  # (M, D); unsent rows get weight 0
    wts = jnp.where(keep, f32(topk_weights).reshape(-1), 0.0)
    out = jnp.zeros((n, x.shape[1]), F32).at[tokens].add(wts[:, None] * rows)
    if shared:
        out = out + shared_expert(x, *shared)
    return out.astype(x.dtype), kept


def expert_parallel_moe_layer(mesh, x, topk_ids, topk_weights, w_gate, w_up, w_down,
                              shared_w_gate=None, shared_w_up=None, shared_w_down=None,
                              shared_gate=None, *, capacity_factor: float | None = None,
                              axis: str = "expert"):
    """moe_layer with tokens and experts sharded over the mesh axis ``axis`` (shard_map).

    Global arrays in, global arrays out (the same ``(out, kept)`` as ``moe_layer``): tokens are
    split N/R per device and experts E/R per device (device r holds experts r*E/R ...); the
    shared expert is replicated. Each device packs its kept assignments into one fixed-size
    block per destination (static shapes: N_r * k rows, the most it can send anywhere),
    exchanges blocks with ``lax.all_to_all``, runs its experts as ragged products over what
    it received, and sends the rows back for the weighted combine. ``kept`` is the global
    slot-priority rule, from the all-gathered ids. Differentiable (jax.vjp through it).
    """
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    check_args(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared_w_gate, shared_w_up,
               shared_w_down, shared_gate, capacity_factor=capacity_factor)
    world = mesh.shape[axis]
    for name, size in (("x", x.shape[0]), ("w_gate", w_gate.shape[0])):
        if size % world:
            raise ValueError(f"{name}: leading size {size} must be a multiple of the "
                             f"{world} devices of mesh axis {axis!r}")
    if topk_ids.size and not is_tracer(topk_ids):
        host = np.asarray(topk_ids)
        check_range(int(host.min()), int(host.max()), w_gate.shape[0])
    shared = () if shared_w_gate is None else (shared_w_gate, shared_w_up, shared_w_down)
    shared += () if shared_gate is None else (shared_gate,)
    body = functools.partial(_ep_body, axis=axis, n_experts=w_gate.shape[0],
                             capacity_factor=capacity_factor, gated=shared_gate is not None)
    sharded = P(axis)
    specs = (sharded,) * 6 + (P(),) * len(shared)  # the shared expert is replicated
    fn = jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=(sharded, sharded))
    args = (x, topk_ids, topk_weights, w_gate, w_up, w_down, *shared)
    placed = [jax.device_put(a, NamedSharding(mesh, spec)) for a, spec in zip(args, specs)]
    return jax.jit(fn)(*placed)


def _ep_body(x, topk_ids, topk_weights, w_gate, w_up, w_down, *shared, axis, n_experts,
             capacity_factor, gated):
    if shared and not gated:
        shared = (*shared, None)
    return _ep_local(x, topk_ids, topk_weights, w_gate, w_up, w_down, shared, axis=axis,
                     n_experts=n_experts, capacity_factor=capacity_factor)
