"""Planted bugs in the paged-KV block manager (serve/blocks.py): subclasses that each get one
thing wrong. tests/serve/test_blocks.py proves that its checks catch every one."""

from __future__ import annotations

from lmspec.serve.blocks import BlockManager


class SlotOffsetOffByOne(BlockManager):
    """slot() puts position p at offset (p + 1) % B: writes land one slot past where paged
    attention reads them (a no-op only at B = 1)."""

    def slot(self, seq_id, pos):
        block, offset = super().slot(seq_id, pos)
        return block, (offset + 1) % self.block_size


class HashOnlyMatch(BlockManager):
    """A cached block matched by its hash alone, the tokens never re-checked: a collision
    serves another request's KV."""

    def _prefix_matches(self, block, prefix):
        return True


class BlockTokensOnlyMatch(BlockManager):
    """The re-check compares the block's own B tokens, not the whole prefix (the key of older
    vLLM v1's BlockHashType): a collision of the parent chain serves KV computed after another
    prefix."""

    def _prefix_matches(self, block, prefix):
        b = self.block_size
        return self._prefix_of[block][-b:] == prefix[-b:]


class FreeWithoutDecrement(BlockManager):
    """free() forgets to decrement the refcount: the sequence's blocks leak."""

    def _release(self, block):
        pass


class ReleaseWhileShared(BlockManager):
    """free() returns each block to the pool whether or not another fork still holds it; when
    the second fork frees, the block goes back a second time."""

    def _release(self, block):
        self._ref[block] = max(self._ref[block] - 1, 0)
        if block in self._hash_of:
            self._evictable[block] = None
        else:
            self._free.append(block)


class NoCopyOnWrite(BlockManager):
    """append() writes into a shared, partly filled last block in place: the other forks see
    tokens they never produced."""

    def _make_last_block_writable(self, seq_id):
        return []


class EvictReferenced(BlockManager):
    """Eviction takes the oldest cached block, referenced or not (LRU over the whole cache
    instead of over the unreferenced blocks)."""

    def _evict_one(self):
        block = next(iter(self._hash_of))  # registration order
        self._evictable.pop(block, None)
        self._uncache(block)
        return block


class EvictMostRecent(BlockManager):
    """Eviction takes the most recently released unreferenced block (MRU instead of LRU)."""

    def _evict_one(self):
        block, _ = self._evictable.popitem(last=True)
        self._uncache(block)
        return block


class DraftsHashed(BlockManager):
    """Speculative decoding: blocks filled by draft tokens are hashed and cached at once (a
    rejected draft enters the prefix cache)."""

    def _hash_settled(self, seq_id):
        prov, self._provisional[seq_id] = self._provisional[seq_id], 0
        try:
            super()._hash_settled(seq_id)
        finally:
            self._provisional[seq_id] = prov

    def settle(self, seq_id, num_tokens):
        self._hashes[seq_id] = self._hashes[seq_id][:num_tokens // self._block_size]
        super().settle(seq_id, num_tokens)


class SettleKeepsRejectedBlocks(BlockManager):
    """Speculative decoding: settle shortens the token list but keeps the rejected drafts'
    blocks in the table (they leak until the sequence is freed)."""

    def settle(self, seq_id, num_tokens):
        table = list(self._tables[seq_id])
        super().settle(seq_id, num_tokens)
        for blk in table[len(self._tables[seq_id]):]:
            self._free.remove(blk)
            self._ref[blk] = 1
        self._tables[seq_id][:] = table


MUTANTS: dict[str, type[BlockManager]] = {
    cls.__name__: cls for cls in (SlotOffsetOffByOne, HashOnlyMatch, BlockTokensOnlyMatch,
                                  FreeWithoutDecrement, ReleaseWhileShared, NoCopyOnWrite,
                                  EvictReferenced, EvictMostRecent, DraftsHashed,
                                  SettleKeepsRejectedBlocks)
}
