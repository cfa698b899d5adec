"""The paged KV store of the engine: the physical blocks of every layer's cache, laid out as the
block manager (serve/blocks.py) assigns them, holding what the model's caches hold
(spec/model.py ``cache_shapes``): per-token entries (GQA's ``k`` and ``v``, MLA's latent
``c_kv`` and ``k_rope``) are paged, ``pool[layer][name]`` of shape (num_blocks, block_size,
...) with token position p of a sequence at ``(block_table[p // block_size], p %
block_size)``; per-sequence recurrent entries (lightning attention's ``state``) are kept per
sequence, valid at its computed length (a model with them runs without prefix caching: a
cached block holds no state).

The store is host memory (NumPy) in the model's compute dtype, so it serves every backend;
``gather`` hands a sequence's caches to the backend's ``model`` as contiguous (1, L, ...)
arrays and ``write`` takes back the new positions."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from lmspec.spec.model import ModelConfig, cache_shapes


def paged_entries(config: ModelConfig) -> list[dict[str, tuple[int, ...]]]:
    """Per layer, the per-token cache entries and their per-token shapes."""
    one, two = cache_shapes(config, 1, 1), cache_shapes(config, 1, 2)
    return [{n: s[2:] for n, s in a.items() if s != b[n]} for a, b in zip(one, two)]


def has_recurrent_state(config: ModelConfig) -> bool:
    return any(set(a) - set(p) for a, p in zip(cache_shapes(config, 1, 1),
                                                 paged_entries(config)))


class PagedKV:
    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int,
                 dtype: str | np.dtype = np.float32):
        self.config, self.block_size = config, block_size
        self.dtype = np.dtype(dtype)
        self.entries = paged_entries(config)
        self.pool = [{n: np.zeros((num_blocks, block_size, *s), self.dtype)
                      for n, s in layer.items()} for layer in self.entries]
        self.states: dict[Hashable, list[dict[str, np.ndarray]]] = {}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for layer in self.pool for a in layer.values())

    def _slots(self, table: Sequence[int], start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        pos = np.arange(start, start + n)
        return np.asarray(table, np.int64)[pos // self.block_size], pos % self.block_size

    def gather(self, seq_id: Hashable, table: Sequence[int], length: int) -> list[dict] | None:
        """The sequence's caches of its first ``length`` positions, (1, length, ...) per
        paged entry (plus its recurrent state), or None when length is 0."""
        if length == 0:
            return None
        blk, off = self._slots(table, 0, length)
        out = []
        for i, layer in enumerate(self.pool):
            d = {n: a[blk, off][None] for n, a in layer.items()}
            d.update(self.states.get(seq_id, [{}] * len(self.pool))[i])
            out.append(d)
        return out

    def write(self, seq_id: Hashable, table: Sequence[int], start: int,
              caches: list[dict[str, np.ndarray]]) -> None:
        """Stores the positions ``start ..`` of the model's returned (1, L, ...) caches (L =
        start + the chunk's length) and the recurrent state."""
        states = []
        for layer, c in zip(self.pool, caches):
            st = {}
            for n, a in c.items():
                a = np.asarray(a)
                if n in layer:
                    blk, off = self._slots(table, start, a.shape[1] - start)
                    layer[n][blk, off] = a[0, start:].astype(self.dtype)
                else:
                    st[n] = a
            states.append(st)
        if any(states):
            self.states[seq_id] = states

    def copy(self, src: int, dst: int) -> None:
        """Copy-on-write: block ``dst`` takes ``src``'s slots (the block manager said so)."""
        for layer in self.pool:
            for a in layer.values():
                a[dst] = a[src]

    def drop(self, seq_id: Hashable) -> None:
        self.states.pop(seq_id, None)


class TorchPagedKV:
    """The paged pool as torch tensors on the backend's device, for the batched step of
    torch_triton's ``model_packed``: per layer ``k`` and ``v`` of shape (num_blocks *
    block_size, Hkv, hd), slot index = block * block_size + offset. ``plan`` sets the
    step's layout (each sequence's new slots and all of its slots, in packed order); then
    each layer's ``attend`` writes the step's keys and values and attends each sequence's
    queries over its own positions with the backend's sdpa (causal, bottom-right: the new
    tokens are the sequence's last)."""

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, dtype, device):
        import torch

        self.config, self.block_size = config, block_size
        shape = (num_blocks * block_size, config.kv_heads, config.hd)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.device = device
        self._plan: list = []
        self.new_slots = None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def slots(self, table: Sequence[int], start: int, stop: int) -> np.ndarray:
        pos = np.arange(start, stop)
        return np.asarray(table, np.int64)[pos // self.block_size] * self.block_size + \
            pos % self.block_size

    def plan(self, chunks: list[tuple[Sequence[int], int, int]]) -> None:
        """chunks: (block table, start, number of new tokens) per sequence, in packed order."""
        import torch

        new, self._plan, q0 = [], [], 0
        for table, start, n in chunks:
            new.append(self.slots(table, start, start + n))
            every = torch.as_tensor(self.slots(table, 0, start + n), device=self.device)
            self._plan.append((q0, q0 + n, every))
            q0 += n
        self.new_slots = torch.as_tensor(np.concatenate(new), device=self.device)

    def layer(self, i: int) -> _TorchLayer:
        return _TorchLayer(self, i)

    def copy(self, src: int, dst: int) -> None:
        b = self.block_size
        for t in self.k + self.v:
            t[dst * b:(dst + 1) * b] = t[src * b:(src + 1) * b]

    def drop(self, seq_id) -> None:
        pass  # no per-sequence state in a GQA pool


class _TorchLayer:
    def __init__(self, kv: TorchPagedKV, i: int):
        self.kv, self.i = kv, i

    def attend(self, q, k, v, window):
        from lmspec.backends.torch_triton.sdpa import sdpa

        kv = self.kv
        pk, pv = kv.k[self.i], kv.v[self.i]
        pk[kv.new_slots] = k.to(pk.dtype)
        pv[kv.new_slots] = v.to(pv.dtype)
        outs = []
        for q0, q1, every in kv._plan:
            o, _ = sdpa(q[None, q0:q1], pk[every][None].to(q.dtype), pv[every][None].to(q.dtype),
                        causal=True, window=window)
            outs.append(o[0])
        return outs[0] if len(outs) == 1 else __import__("torch").cat(outs)
