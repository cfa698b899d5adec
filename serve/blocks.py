"""The paged-KV block manager (vLLM's PagedAttention, Kwon et al., SOSP 2023, arXiv:2309.06180)
with automatic prefix caching by chained block hashes: an explicit, inspectable state machine.

State
-----
A pool of ``num_blocks`` physical blocks (ids ``0 .. num_blocks-1``) of ``block_size`` = B token
slots each. Every block is in exactly one of three sets:

- **free**: unreferenced and holding no cached prefix (a deque; new blocks are taken from its
  head, released ones go to its tail);
- **evictable**: unreferenced but holding a cached full prefix block, in LRU order (least
  recently released first);
- **referenced**: ``refcount(b) > 0``, where ``refcount(b)`` is exactly the number of live block
  tables that contain ``b``.

Per sequence: its token ids, its block table (logical block i -> physical block), the chained
hashes of its full blocks, and ``num_computed_tokens`` (how much of the prompt the prefix cache
served at allocation). The physical slot of token position p is::

    slot(seq, p) = (block_table(seq)[p // B], p % B)

and the table always has ``ceil(num_tokens / B)`` blocks. A block holds the KV of the positions
it covers; the engine writes a slot's KV only through ``slot()`` and reads a sequence's KV by
the same formula (paged attention). The manager never writes KV itself.

Prefix cache
------------
The hash of full block i of a token sequence t is chained::

    h_0 = hash_fn(None, t[0:B]);   h_i = hash_fn(h_{i-1}, t[iB:(i+1)B])

The default ``hash_fn`` is ``sha256_block_hash``: SHA-256 over the 32-byte parent digest
(``ROOT_HASH`` = 32 zero bytes for the first block), then the token count and each token id as
8-byte little-endian integers; it is reproducible across processes. ``hash_fn`` is injectable
(any function of ``(parent, tokens) -> hashable``), so tests can force collisions. The cache maps
a hash to one block; beside it the manager keeps, for each cached block at depth i, its full
token prefix ``t[0:(i+1)B]``. A lookup hits only if the hash is found *and* that stored prefix
equals the request's prefix, so no hash collision, at any depth, can serve another request's KV
(a mismatch counts in ``num_hash_collisions`` and is a miss).

Peers: vLLM v1 (``vllm/v1/core/kv_cache_utils.py``, ``hash_block_tokens``) hashes
``(parent_hash, tuple(token_ids), extra_keys)`` with ``sha256_cbor`` by default (seeded by a
random ``NONE_HASH`` unless ``PYTHONHASHSEED`` is set; the extra keys carry LoRA, multimodal
and ``cache_salt`` ids) and trusts the hash alone on a hit; its earlier ``BlockHashType``
(hash value, block token ids, extra keys) compared the block's own tokens but not the parent
chain. SGLang's ``RadixCache`` keeps no hash for matching: a radix tree over token ids (pages of
``page_size`` tokens, the key truncated to whole pages) compares the tokens themselves along the
path, so it is exact by construction, and evicts unlocked (``lock_ref == 0``) leaves in LRU
order. Here there are no extra keys (no LoRA/multimodal/salt isolation).

Decisions
---------
- Only **full** blocks are ever cached or hit (as in vLLM); a partly filled last block is never
  a hit. A block is registered when it becomes full (at ``allocate`` or ``append``), unless its
  hash is already in the cache (a duplicate, or a collision): then it stays uncached and goes
  to the free list when released. The engine must write the slots of a step before the next
  ``allocate`` could hit them (true of a step-synchronous engine).
- Matching runs from block 0 and stops at the first miss, and at most ``(n - 1) // B`` blocks
  of an n-token prompt are hit: the last prompt token is always computed, for its logits. So
  a prompt whose every block is cached still recomputes its whole last block, which is then a
  duplicate and stays uncached (vLLM's ``max_cache_hit_length = num_tokens - 1``, which it
  notes can recompute a whole block). ``allocate`` returns ``num_computed_tokens`` = hits * B;
  the engine computes positions ``num_computed_tokens .. n-1``.
- **Fork** (vLLM v0's ``fork``): the child shares every parent block (refcounts +1) and needs
  no block. **Copy-on-write** (vLLM v0's ``append_slot``): the first write to a last block that
  is partly filled and shared (refcount > 1) goes to a fresh block; ``append`` returns the copy
  ``(src, dst)`` and the engine must copy the KV of src's filled slots to dst before writing.
  The copy has no hash while partly filled; when it fills it is hashed from its own tokens and
  the sequence's chain (the same parent hash as src), like any block. A full shared block is
  never written: a write past it takes a new block.
- **Release** (``free``): a sequence's blocks are released in reverse table order (as vLLM
  v1), so of one sequence's blocks its tail is evicted before its head, which other prompts
  are likelier to share. A block whose refcount reaches 0 goes to the evictable tail if cached,
  else to the free tail.
- **Eviction**: a fresh block comes from the free list; only when it is empty is the LRU
  evictable block evicted (its cache entry dropped). Hits are taken before fresh blocks, so an
  allocation never evicts a block it hits. A hit on an evictable block moves it to referenced.
- **Provisional tokens** (speculative decoding): ``append(seq, toks, provisional=k)`` marks
  the last k tokens as drafts that the step may reject. A block is hashed and registered only
  when it is full of settled tokens, so a draft never enters the prefix cache and no other
  sequence can hit a block that holds one. ``settle(seq, n)`` keeps the first n tokens (every
  settled token and the accepted drafts), releases the blocks past them (fresh, unhashed
  blocks: they go to the free list) and registers the blocks that the accepted drafts filled.
  A sequence with provisional tokens cannot be forked.
- Every operation checks first and then changes state: an ``OutOfBlocksError`` (or a misuse
  error) leaves the state unchanged.

Scheduler queries: ``blocks_needed_to_allocate(tokens)`` is the number of blocks ``allocate``
takes from the pool (free + evictable): ``ceil(n / B)`` minus the hits on blocks that are
referenced already; ``blocks_needed_to_append(seq, k)`` is ``ceil((L+k)/B) - ceil(L/B)`` plus 1
for a copy-on-write. ``can_*`` compares them with ``num_available_blocks``.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence

import numpy as np

HashFn = Callable[[Hashable | None, tuple[int, ...]], Hashable]
ROOT_HASH = bytes(32)  # the parent digest of every sequence's first block
_TOKEN_LIMIT = 2**63  # token ids are encoded as int64


class BlockManagerError(Exception):
    """Base of the block manager's errors."""


class OutOfBlocksError(BlockManagerError):
    """An allocate/append needs more blocks than the pool (free + evictable) holds."""


class UnknownSequenceError(BlockManagerError, LookupError):
    """A sequence id that is not allocated (never, or no longer)."""


class InvariantError(BlockManagerError, AssertionError):
    """``check_invariants`` found the state inconsistent."""


def sha256_block_hash(parent: bytes | None, tokens: tuple[int, ...]) -> bytes:
    """SHA-256 of ``parent (32 bytes, ROOT_HASH if None) || len(tokens) || tokens``, the count
    and each id as 8-byte little-endian integers."""
    parent = ROOT_HASH if parent is None else parent
    if not isinstance(parent, bytes) or len(parent) != 32:
        raise TypeError(f"parent: expected a 32-byte digest or None, got {parent!r}")
    h = hashlib.sha256(parent)
    h.update(len(tokens).to_bytes(8, "little"))
    h.update(np.asarray(tokens, dtype="<i8").tobytes())
    return h.digest()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}: expected an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value}")
    return int(value)


def _token_ids(name: str, tokens, *, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(tokens, np.ndarray):
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise TypeError(f"{name}: expected a 1-D integer array, got {tokens.dtype} "
                            f"of shape {tokens.shape}")
        tokens = tokens.tolist()
    if not isinstance(tokens, Sequence) or isinstance(tokens, str | bytes):
        raise TypeError(f"{name}: expected a sequence of token ids, got {type(tokens).__name__}")
    out = []
    for i, t in enumerate(tokens):
        if isinstance(t, bool) or not isinstance(t, int | np.integer) \
                or not 0 <= t < _TOKEN_LIMIT:
            raise ValueError(f"{name}[{i}] = {t!r}: expected an integer token id in [0, 2**63)")
        out.append(int(t))
    if not out and not allow_empty:
        raise ValueError(f"{name}: expected at least one token, got none")
    return tuple(out)


class BlockManager:
    """Paged-KV block manager with prefix caching; see the module docstring for the math."""

    def __init__(self, num_blocks: int, block_size: int, *, prefix_caching: bool = True,
                 hash_fn: HashFn = sha256_block_hash) -> None:
        self._num_blocks = _positive_int("num_blocks", num_blocks)
        self._block_size = _positive_int("block_size", block_size)
        if not callable(hash_fn):
            raise TypeError(f"hash_fn: expected a callable (parent, tokens) -> hash, "
                            f"got {hash_fn!r}")
        self._prefix_caching = bool(prefix_caching)
        self._hash_fn = hash_fn
        self._free: deque[int] = deque(range(self._num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # LRU first
        self._ref = [0] * self._num_blocks
        self._cache: dict[Hashable, int] = {}  # hash -> block
        self._hash_of: dict[int, Hashable] = {}  # cached block -> hash (registration order)
        self._prefix_of: dict[int, tuple[int, ...]] = {}  # cached block -> tokens 0..(i+1)B-1
        self._tables: dict[Hashable, list[int]] = {}
        self._tokens: dict[Hashable, list[int]] = {}
        self._hashes: dict[Hashable, list[Hashable]] = {}  # chain hashes of full blocks
        self._computed: dict[Hashable, int] = {}
        self._provisional: dict[Hashable, int] = {}  # trailing draft tokens, not hashed
        self._freed: set[Hashable] = set()
        self._num_cache_hits = 0
        self._num_hash_collisions = 0

    # ------------------------------------------------------------------ inspection

    @property
    def num_blocks(self) -> int:
        return self._num_blocks

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def prefix_caching(self) -> bool:
        return self._prefix_caching

    @property
    def free_blocks(self) -> tuple[int, ...]:
        """Unreferenced, uncached blocks, in the order they will be taken."""
        return tuple(self._free)

    @property
    def evictable_blocks(self) -> tuple[int, ...]:
        """Unreferenced cached blocks, least recently released (next evicted) first."""
        return tuple(self._evictable)

    @property
    def cached_blocks(self) -> tuple[int, ...]:
        """Every block that holds a registered prefix (referenced or evictable)."""
        return tuple(self._hash_of)

    @property
    def num_available_blocks(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def num_cache_hits(self) -> int:
        """Blocks served from the prefix cache by ``allocate``, over the manager's life."""
        return self._num_cache_hits

    @property
    def num_hash_collisions(self) -> int:
        """Lookups whose hash was cached but whose stored prefix differed (served as misses)."""
        return self._num_hash_collisions

    @property
    def sequences(self) -> tuple[Hashable, ...]:
        return tuple(self._tables)

    def refcount(self, block: int) -> int:
        return self._ref[self._block_index(block)]

    def block_hash(self, block: int) -> Hashable | None:
        return self._hash_of.get(self._block_index(block))

    def cached_prefix(self, block: int) -> tuple[int, ...] | None:
        """The token prefix (positions 0 .. (i+1)B-1) whose KV a cached block holds."""
        return self._prefix_of.get(self._block_index(block))

    def block_table(self, seq_id: Hashable) -> tuple[int, ...]:
        return tuple(self._table("seq_id", seq_id))

    def tokens(self, seq_id: Hashable) -> tuple[int, ...]:
        self._table("seq_id", seq_id)
        return tuple(self._tokens[seq_id])

    def num_tokens(self, seq_id: Hashable) -> int:
        self._table("seq_id", seq_id)
        return len(self._tokens[seq_id])

    def num_computed_tokens(self, seq_id: Hashable) -> int:
        """Tokens whose KV the prefix cache supplied at allocation (the parent's length for a
        fork); the engine computes the positions from here on."""
        self._table("seq_id", seq_id)
        return self._computed[seq_id]

    def slot(self, seq_id: Hashable, pos: int) -> tuple[int, int]:
        """``(block_table[pos // B], pos % B)``: the physical slot of token position ``pos``."""
        table = self._table("seq_id", seq_id)
        n = len(self._tokens[seq_id])
        if isinstance(pos, bool) or not isinstance(pos, int | np.integer) or not 0 <= pos < n:
            raise IndexError(f"pos: expected an integer in [0, {n}) for sequence {seq_id!r}, "
                             f"got {pos!r}")
        return table[pos // self._block_size], int(pos) % self._block_size

    def state(self) -> dict:
        """A plain snapshot of the whole state (for comparing two implementations)."""
        return {
            "free": list(self._free), "evictable": list(self._evictable),
            "refcount": list(self._ref),
            "tables": {s: list(t) for s, t in self._tables.items()},
            "tokens": {s: list(t) for s, t in self._tokens.items()},
            "computed": dict(self._computed), "provisional": dict(self._provisional),
            "cached": {b: (self._hash_of[b], self._prefix_of[b]) for b in self._hash_of},
            "hits": self._num_cache_hits, "collisions": self._num_hash_collisions,
        }

    # ------------------------------------------------------------------ scheduler queries

    def blocks_needed_to_allocate(self, tokens) -> int:
        """Blocks ``allocate(_, tokens)`` would take from the pool (free + evictable)."""
        toks = _token_ids("tokens", tokens, allow_empty=False)
        _, hits, _ = self._match_prefix(toks)
        return _cdiv(len(toks), self._block_size) - sum(self._ref[b] > 0 for b in hits)

    def can_allocate(self, tokens) -> bool:
        return self.blocks_needed_to_allocate(tokens) <= self.num_available_blocks

    def blocks_needed_to_append(self, seq_id: Hashable, num_tokens: int) -> int:
        """Blocks ``append`` of ``num_tokens`` tokens would take (new blocks + copy-on-write)."""
        table = self._table("seq_id", seq_id)
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int | np.integer) \
                or num_tokens < 0:
            raise ValueError(f"num_tokens: expected an integer >= 0, got {num_tokens!r}")
        n, b = len(self._tokens[seq_id]), self._block_size
        cow = int(num_tokens > 0 and n % b != 0 and self._ref[table[-1]] > 1)
        return _cdiv(n + num_tokens, b) - _cdiv(n, b) + cow

    def can_append(self, seq_id: Hashable, num_tokens: int) -> bool:
        return self.blocks_needed_to_append(seq_id, num_tokens) <= self.num_available_blocks

    # ------------------------------------------------------------------ transitions

    def allocate(self, seq_id: Hashable, tokens) -> int:
        """A new sequence with its prompt; returns ``num_computed_tokens`` (cache hits * B)."""
        self._check_new("seq_id", seq_id)
        toks = _token_ids("tokens", tokens, allow_empty=False)
        hashes, hits, collided = self._match_prefix(toks)
        n_blocks = _cdiv(len(toks), self._block_size)
        self._ensure_available(n_blocks - sum(self._ref[b] > 0 for b in hits),
                               f"allocate {seq_id!r} ({len(toks)} tokens, {len(hits)} cached "
                               f"blocks)")
        table = []
        for b in hits:  # before any fresh block, so that no eviction takes a hit
            if self._ref[b] == 0:
                del self._evictable[b]
            self._ref[b] += 1
            table.append(b)
        while len(table) < n_blocks:
            table.append(self._take_fresh())
        for i in range(len(hits), len(hashes)):
            self._register(table[i], hashes[i], toks[:(i + 1) * self._block_size])
        self._tables[seq_id], self._tokens[seq_id] = table, list(toks)
        self._hashes[seq_id] = hashes
        self._provisional[seq_id] = 0
        self._computed[seq_id] = len(hits) * self._block_size
        self._freed.discard(seq_id)
        self._num_cache_hits += len(hits)
        self._num_hash_collisions += collided
        return self._computed[seq_id]

    def append(self, seq_id: Hashable, tokens, *, provisional: int = 0
               ) -> list[tuple[int, int]]:
        """Tokens appended to a sequence (decode, or a prefill chunk); returns the copy-on-write
        copies ``[(src, dst)]`` (at most one) the engine must do before writing the slots.
        ``provisional``: the last so many of ``tokens`` are drafts (see ``settle``)."""
        self._table("seq_id", seq_id)
        toks = _token_ids("tokens", tokens, allow_empty=True)
        if isinstance(provisional, bool) or not isinstance(provisional, int | np.integer) \
                or not 0 <= provisional <= len(toks):
            raise ValueError(f"provisional: expected an integer in [0, {len(toks)}], got "
                             f"{provisional!r}")
        if self._provisional[seq_id]:
            raise ValueError(f"seq_id: {seq_id!r} holds {self._provisional[seq_id]} "
                             f"provisional tokens: settle them before appending")
        if not toks:
            return []
        self._ensure_available(self.blocks_needed_to_append(seq_id, len(toks)),
                               f"append {len(toks)} tokens to {seq_id!r}")
        copies = self._make_last_block_writable(seq_id)
        seq, table = self._tokens[seq_id], self._tables[seq_id]
        b = self._block_size
        seq.extend(toks)
        while len(table) < _cdiv(len(seq), b):
            table.append(self._take_fresh())
        self._provisional[seq_id] = int(provisional)
        self._hash_settled(seq_id)
        return copies

    def settle(self, seq_id: Hashable, num_tokens: int) -> None:
        """Keep the sequence's first ``num_tokens`` tokens: all of its settled ones and the
        accepted drafts; the rejected drafts' blocks are released, tail first."""
        table = self._table("seq_id", seq_id)
        seq, b = self._tokens[seq_id], self._block_size
        lo = len(seq) - self._provisional[seq_id]
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int | np.integer) \
                or not lo <= num_tokens <= len(seq):
            raise ValueError(f"num_tokens: expected an integer in [{lo}, {len(seq)}] (the "
                             f"settled tokens up to all drafts), got {num_tokens!r}")
        del seq[num_tokens:]
        while len(table) > _cdiv(len(seq), b):
            self._release(table.pop())
        self._provisional[seq_id] = 0
        self._hash_settled(seq_id)

    def num_provisional_tokens(self, seq_id: Hashable) -> int:
        self._table("seq_id", seq_id)
        return self._provisional[seq_id]

    def _hash_settled(self, seq_id: Hashable) -> None:
        """Hash and register the blocks full of settled tokens that have no hash yet."""
        seq, table, hashes = self._tokens[seq_id], self._tables[seq_id], self._hashes[seq_id]
        b = self._block_size
        for i in range(len(hashes), (len(seq) - self._provisional[seq_id]) // b):
            hashes.append(self._hash_fn(hashes[-1] if hashes else None,
                                        tuple(seq[i * b:(i + 1) * b])))
            self._register(table[i], hashes[i], tuple(seq[:(i + 1) * b]))

    def fork(self, parent_id: Hashable, child_id: Hashable) -> None:
        """A child sharing every block of the parent (no block is taken)."""
        parent = self._table("parent_id", parent_id)
        self._check_new("child_id", child_id)
        if self._provisional[parent_id]:
            raise ValueError(f"parent_id: {parent_id!r} holds provisional tokens: settle "
                             f"them before forking")
        for blk in parent:
            self._ref[blk] += 1
        self._tables[child_id] = list(parent)
        self._tokens[child_id] = list(self._tokens[parent_id])
        self._hashes[child_id] = list(self._hashes[parent_id])
        self._provisional[child_id] = 0
        self._computed[child_id] = len(self._tokens[parent_id])
        self._freed.discard(child_id)

    def free(self, seq_id: Hashable) -> None:
        """Releases a sequence's blocks, tail first."""
        table = self._table("seq_id", seq_id)
        for blk in reversed(table):
            self._release(blk)
        for d in (self._tables, self._tokens, self._hashes, self._computed, self._provisional):
            del d[seq_id]
        self._freed.add(seq_id)

    # ------------------------------------------------------------------ steps (one idea each)

    def _match_prefix(self, toks: tuple[int, ...]):
        """(chain hashes of the full blocks, the blocks hit, whether a collision ended it)."""
        b = self._block_size
        hashes: list[Hashable] = []
        for i in range(len(toks) // b):
            hashes.append(self._hash_fn(hashes[-1] if hashes else None, toks[i * b:(i + 1) * b]))
        hits: list[int] = []
        if not self._prefix_caching:
            return hashes, hits, False
        for i in range((len(toks) - 1) // b):  # the last token is always computed
            blk = self._cache.get(hashes[i])
            if blk is None:
                return hashes, hits, False
            if not self._prefix_matches(blk, toks[:(i + 1) * b]):
                return hashes, hits, True
            hits.append(blk)
        return hashes, hits, False

    def _prefix_matches(self, block: int, prefix: tuple[int, ...]) -> bool:
        return self._prefix_of[block] == prefix

    def _register(self, block: int, h: Hashable, prefix: tuple[int, ...]) -> None:
        if self._prefix_caching and h not in self._cache:
            self._cache[h] = block
            self._hash_of[block] = h
            self._prefix_of[block] = prefix

    def _uncache(self, block: int) -> None:
        del self._cache[self._hash_of.pop(block)]
        del self._prefix_of[block]

    def _take_fresh(self) -> int:
        block = self._free.popleft() if self._free else self._evict_one()
        self._ref[block] = 1
        return block

    def _evict_one(self) -> int:
        block, _ = self._evictable.popitem(last=False)
        self._uncache(block)
        return block

    def _make_last_block_writable(self, seq_id: Hashable) -> list[tuple[int, int]]:
        table = self._tables[seq_id]
        if len(self._tokens[seq_id]) % self._block_size == 0 or self._ref[table[-1]] == 1:
            return []  # the next write opens a new block, or the last block is private
        src = table[-1]
        dst = self._take_fresh()
        self._ref[src] -= 1
        table[-1] = dst
        return [(src, dst)]

    def _release(self, block: int) -> None:
        self._ref[block] -= 1
        if self._ref[block] == 0:
            if block in self._hash_of:
                self._evictable[block] = None
            else:
                self._free.append(block)

    # ------------------------------------------------------------------ checks

    def _ensure_available(self, need: int, what: str) -> None:
        if need > self.num_available_blocks:
            raise OutOfBlocksError(
                f"{what}: needs {need} blocks, only {self.num_available_blocks} available "
                f"({len(self._free)} free + {len(self._evictable)} evictable of "
                f"{self._num_blocks})")

    def _table(self, name: str, seq_id: Hashable) -> list[int]:
        try:
            return self._tables[seq_id]
        except KeyError:
            was = " (it was freed)" if seq_id in self._freed else ""
            raise UnknownSequenceError(
                f"{name}: sequence {seq_id!r} is not allocated{was}") from None
        except TypeError:
            raise TypeError(f"{name}: expected a hashable sequence id, got {seq_id!r}") from None

    def _check_new(self, name: str, seq_id: Hashable) -> None:
        if not isinstance(seq_id, Hashable):
            raise TypeError(f"{name}: expected a hashable sequence id, got {seq_id!r}")
        if seq_id in self._tables:
            raise ValueError(f"{name}: sequence {seq_id!r} is already allocated")

    def _block_index(self, block: int) -> int:
        if isinstance(block, bool) or not isinstance(block, int | np.integer) \
                or not 0 <= block < self._num_blocks:
            raise IndexError(f"block: expected an integer in [0, {self._num_blocks}), "
                             f"got {block!r}")
        return int(block)

    def check_invariants(self) -> None:
        """Raises InvariantError unless the state is consistent (see the module docstring)."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise InvariantError(msg)

        b = self._block_size
        free, ev = list(self._free), list(self._evictable)
        refs = Counter(blk for t in self._tables.values() for blk in t)
        need(len(set(free)) == len(free), f"a block is in the free list twice: {free}")
        for blk in range(self._num_blocks):
            need(self._ref[blk] == refs[blk],
                 f"block {blk}: refcount {self._ref[blk]}, but {refs[blk]} tables hold it")
            where = (blk in self._free) + (blk in self._evictable) + (refs[blk] > 0)
            need(where == 1, f"block {blk} is in {where} of free/evictable/referenced")
        need(all(blk in self._hash_of for blk in ev), "an evictable block is not cached")
        need(not set(free) & set(self._hash_of), "a free block is cached")
        need(all(self._cache.get(h) == blk for blk, h in self._hash_of.items())
             and len(self._cache) == len(self._hash_of) == len(self._prefix_of),
             "the hash -> block map and the cached blocks disagree")
        at: dict[int, tuple[int, int]] = {}  # referenced block -> (logical index, filled slots)
        for s, table in self._tables.items():
            toks = self._tokens[s]
            need(len(table) == _cdiv(len(toks), b) and len(set(table)) == len(table),
                 f"sequence {s!r}: table {table} for {len(toks)} tokens")
            prov = self._provisional[s]
            need(0 <= prov <= len(toks) and len(self._hashes[s]) == (len(toks) - prov) // b,
                 f"sequence {s!r}: hash chain length")
            need(0 <= self._computed[s] <= len(toks), f"sequence {s!r}: num_computed_tokens")
            for i, blk in enumerate(table):
                here = (i, min(b, len(toks) - i * b))
                need(at.setdefault(blk, here) == here,
                     f"block {blk} is shared at different positions or fills")
                if blk in self._prefix_of:
                    need(self._prefix_of[blk] == tuple(toks[:(i + 1) * b]),
                         f"cached block {blk} holds another prefix than sequence {s!r}")
