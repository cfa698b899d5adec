"""The paged-KV block manager (serve/blocks.py): a hypothesis state machine that drives it with
a shadow KV cache and checks the invariants after every step, hand-worked examples, misuse
errors, and the proof that every planted bug of _block_mutants.py is caught by both."""

from __future__ import annotations

import hashlib
import os
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from lmspec.serve.blocks import (
    ROOT_HASH,
    BlockManager,
    InvariantError,
    OutOfBlocksError,
    UnknownSequenceError,
    sha256_block_hash,
)

sys.path.insert(0, str(Path(__file__).parent))
from _block_mutants import MUTANTS  # noqa: E402

# (state-machine runs, steps per run) for the real manager, by LMSPEC_PROFILE (the project's
# hypothesis budgets, conformance/conftest.py). Measured on the 2-core machine: ci 6 s (the whole
# file 14 s), thorough 105 s.
RUNS = {"smoke": (15, 30), "ci": (250, 50), "ci-noshrink": (250, 50), "thorough": (3000, 80)}
PROFILE = os.environ.get("LMSPEC_PROFILE", "ci")
# The mutants run on a fixed, derandomized budget whatever the profile (each stops at its first
# failure, unshrunk), so that the proof holds at smoke too.
MUTANT_RUNS = (300, 50)
MAX_LEN = 40  # tokens per sequence: keeps the shadow checks cheap
VOCAB = 3  # a small vocabulary: prompts share prefixes and weak hashes collide


def _settings(runs: int, steps: int, *, derandomize: bool, shrink: bool) -> settings:
    phases = (Phase.explicit, Phase.reuse, Phase.generate) + ((Phase.shrink,) if shrink else ())
    return settings(max_examples=runs, stateful_step_count=steps, derandomize=derandomize,
                    database=None, deadline=None, phases=phases, print_blob=False,
                    suppress_health_check=list(HealthCheck))


def weak_hash(parent, tokens) -> int:
    """Four buckets, chained: forces collisions of blocks and of parent chains."""
    return ((parent or 0) * 3 + sum(tokens) + len(tokens)) % 4


def unchained_hash(parent, tokens) -> int:
    """The block's tokens only, the parent ignored: equal blocks after different prefixes
    collide (what the full-prefix re-check exists for)."""
    return sum(tokens) % 5


HASHES = {"sha256": sha256_block_hash, "weak": weak_hash, "unchained": unchained_hash}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


GROUPS = ("accounting", "shadow", "transitions")
# Which check groups, each run alone, must catch each planted bug (proof that every group can
# fail): accounting = the block partition, refcounts recounted from the tables, where fresh
# blocks come from and the LRU order; shadow = the shadow KV (no write into a shared block,
# every sequence reads back its own prefix, cached blocks hold their prefix's KV);
# transitions = each operation's expected result (hits, copies, counts, slot formula, errors).
CATCHES = {
    "DraftsHashed": ("transitions",),
    "SettleKeepsRejectedBlocks": ("accounting", "transitions"),
    "SlotOffsetOffByOne": ("shadow", "transitions"),
    "HashOnlyMatch": ("shadow", "transitions"),
    "BlockTokensOnlyMatch": ("shadow", "transitions"),
    "FreeWithoutDecrement": ("accounting",),
    "ReleaseWhileShared": ("accounting", "shadow"),
    "NoCopyOnWrite": ("shadow", "transitions"),
    "EvictReferenced": ("accounting", "shadow"),
    "EvictMostRecent": ("accounting",),
}


def machine_for(cls: type[BlockManager], *, checks=GROUPS, manager_checks: bool = True):
    """A state machine over ``cls``. Its checks never trust the manager's bookkeeping: they
    recount references from the block tables, write each token's KV through ``slot()`` into a
    shadow cache whose slot holds the token prefix the KV was computed from (KV at position p
    depends on tokens 0..p), and read it back through the block table as paged attention does.
    ``checks`` picks the groups of checks that run; with ``manager_checks`` the manager's own
    ``check_invariants`` runs too."""
    on = frozenset(checks)

    class BlockMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.m: BlockManager | None = None
            self.seqs: dict[int, list[int]] = {}  # live sequence -> its tokens (the test's copy)
            self.dead: list[int] = []
            self.history: list[tuple[int, ...]] = []  # token lists to draw shared prefixes from
            self.kv: dict[tuple[int, int], tuple[int, ...]] = {}  # shadow: slot -> prefix
            self.next_id = 0

        @initialize(num_blocks=st.integers(1, 24), block_size=st.integers(1, 4),
                    hash_name=st.sampled_from(sorted(HASHES)),
                    caching=st.sampled_from([True, True, False]))
        def init_manager(self, num_blocks, block_size, hash_name, caching):
            self.m = cls(num_blocks, block_size, prefix_caching=caching,
                         hash_fn=HASHES[hash_name])
            self.B = block_size

        # ------------------------------------------------------------ helpers

        def _refs(self) -> Counter:
            return Counter(b for s in self.seqs for b in self.m.block_table(s))

        def _snapshot(self):
            m = self.m
            return (list(m.free_blocks), list(m.evictable_blocks),
                    {b: m.cached_prefix(b) for b in m.cached_blocks}, self._refs())

        def _prompt(self, data) -> list[int]:
            tok = st.integers(0, VOCAB - 1)
            if self.history and data.draw(st.booleans()):
                base = data.draw(st.sampled_from(self.history))
                cut = data.draw(st.integers(0, len(base)))
                p = list(base[:cut]) + data.draw(st.lists(tok, max_size=4))
                if p:
                    return p
            return data.draw(st.lists(tok, min_size=1, max_size=10))

        def _pick(self, data, pool):
            return pool[data.draw(st.integers(0, len(pool) - 1))]

        def _write(self, sid: int, positions) -> None:
            refs = self._refs()
            toks = self.seqs[sid]
            for pos in positions:
                b, off = self.m.slot(sid, pos)
                if "shadow" in on:
                    assert refs[b] == 1, (f"position {pos} of sequence {sid} written into block "
                                          f"{b}, which {refs[b]} sequences hold")
                    assert 0 <= off < self.B, f"slot offset {off} outside the block"
                self.kv[(b, off)] = tuple(toks[:pos + 1])

        def _check_taken(self, before, fresh: list[int], hits: list[int]) -> None:
            """Fresh blocks come from the free list, and only when it is exhausted from the
            evictable set, least recently released first."""
            if "accounting" not in on:
                return
            free, ev, _, _ = before
            from_free = [b for b in fresh if b in free]
            from_ev = [b for b in fresh if b in ev]
            assert len(set(fresh)) == len(fresh) == len(from_free) + len(from_ev), (
                f"fresh blocks {fresh} not all distinct and unreferenced (free {free}, "
                f"evictable {ev})")
            lru = [b for b in ev if b not in hits]
            assert set(from_ev) == set(lru[:len(from_ev)]), (
                f"evicted {from_ev}, but the LRU order was {lru}")
            assert not from_ev or len(from_free) == len(free), "evicted while blocks were free"
            assert list(self.m.evictable_blocks) == lru[len(from_ev):], "evictable order"

        def _refused(self, call, state, what: str) -> None:
            try:
                call()
            except OutOfBlocksError:
                pass
            else:  # the machine cannot go on from a state it did not predict
                raise AssertionError(f"{what} succeeded although the query said no")
            if "transitions" in on:
                assert self.m.state() == state, f"a refused {what} changed the state"

        # ------------------------------------------------------------ rules

        @rule(data=st.data())
        def allocate(self, data):
            m, B = self.m, self.B
            prompt = self._prompt(data)
            before, state = self._snapshot(), m.state()
            need, can = m.blocks_needed_to_allocate(prompt), m.can_allocate(prompt)
            sid, self.next_id = self.next_id, self.next_id + 1
            t = "transitions" in on
            if t:
                assert can == (need <= len(before[0]) + len(before[1])), "can_allocate"
            if not can:
                self._refused(lambda: m.allocate(sid, prompt), state, "allocate")
                return
            computed = m.allocate(sid, prompt)
            self.seqs[sid] = list(prompt)
            table = list(m.block_table(sid))
            n = len(prompt)
            hits = table[:computed // B]
            if t:
                assert computed == m.num_computed_tokens(sid) and computed % B == 0
                assert computed <= n - 1, "the last prompt token must be computed"
                assert len(table) == _cdiv(n, B)
                expected = 0  # maximal: every leading block whose exact prefix is cached hits
                cached = {p: b for b, p in before[2].items()}
                while expected < (n - 1) // B and tuple(prompt[:(expected + 1) * B]) in cached:
                    assert table[expected] == cached[tuple(prompt[:(expected + 1) * B])]
                    expected += 1
                assert len(hits) == expected, f"{len(hits)} blocks hit, {expected} were cached"
                assert need == len(table) - sum(before[3][b] > 0 for b in hits), (
                    f"blocks_needed_to_allocate said {need}")
            self._check_taken(before, table[len(hits):], hits)
            self._write(sid, range(computed, n))
            self.history.append(tuple(prompt))

        @precondition(lambda self: self.seqs)
        @rule(data=st.data(), k=st.integers(0, 6))
        def append(self, data, k):
            m, B = self.m, self.B
            sid = self._pick(data, sorted(self.seqs))
            toks = data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=k, max_size=k))
            old = len(self.seqs[sid])
            if old + k > MAX_LEN:
                return
            before, state = self._snapshot(), m.state()
            old_table = list(m.block_table(sid))
            cow = k > 0 and old % B != 0 and before[3][old_table[-1]] > 1
            need = m.blocks_needed_to_append(sid, k)
            t = "transitions" in on
            if t:
                assert need == _cdiv(old + k, B) - _cdiv(old, B) + cow, (
                    f"blocks_needed_to_append said {need}")
            if not m.can_append(sid, k):
                if t:
                    assert need > len(before[0]) + len(before[1]), "can_append"
                self._refused(lambda: m.append(sid, toks), state, "append")
                return
            copies = m.append(sid, toks)
            self.seqs[sid].extend(toks)
            table = list(m.block_table(sid))
            keep = len(old_table) - cow
            if t:
                assert len(table) == _cdiv(old + k, B)
                assert table[:keep] == old_table[:keep], f"table {old_table} -> {table}"
                want = [(old_table[-1], table[len(old_table) - 1])] if cow else []
                assert copies == want, f"copy-on-write: expected {want}, got {copies}"
            for src, dst in copies:  # the engine copies the block's KV
                for off in range(B):
                    if (src, off) in self.kv:
                        self.kv[(dst, off)] = self.kv[(src, off)]
            self._check_taken(before, table[keep:], [])
            self._write(sid, range(old, old + k))

        @precondition(lambda self: self.seqs)
        @rule(data=st.data(), k=st.integers(1, 5))
        def speculate(self, data, k):
            """A verify chunk (one settled token and k drafts), then settle n of the drafts."""
            m, B = self.m, self.B
            sid = self._pick(data, sorted(self.seqs))
            toks = data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=k + 1,
                                      max_size=k + 1))
            n = data.draw(st.integers(0, k))
            old = len(self.seqs[sid])
            if old + k + 1 > MAX_LEN or not m.can_append(sid, k + 1):
                return
            cached = set(m.cached_blocks)
            copies = m.append(sid, toks, provisional=k)
            for src, dst in copies:
                for off in range(B):
                    if (src, off) in self.kv:
                        self.kv[(dst, off)] = self.kv[(src, off)]
            self.seqs[sid].extend(toks)
            self._write(sid, range(old, old + k + 1))
            if "transitions" in on:
                assert m.num_provisional_tokens(sid) == k
                new = set(m.cached_blocks) - cached
                assert all(len(m.cached_prefix(b)) <= old + 1 for b in new), (
                    "a block holding a draft was cached")
            free = list(m.free_blocks)
            table = list(m.block_table(sid))
            m.settle(sid, old + 1 + n)
            del self.seqs[sid][old + 1 + n:]
            if "accounting" in on:
                released = table[_cdiv(old + 1 + n, B):]
                assert sorted(m.free_blocks) == sorted(free + released), (
                    f"settle released {released}: free list {m.free_blocks}")

        @precondition(lambda self: self.seqs)
        @rule(data=st.data())
        def fork(self, data):
            m = self.m
            parent = self._pick(data, sorted(self.seqs))
            before = self._snapshot()
            child, self.next_id = self.next_id, self.next_id + 1
            m.fork(parent, child)
            self.seqs[child] = list(self.seqs[parent])
            if "transitions" in on:
                assert m.block_table(child) == m.block_table(parent)
                assert m.num_computed_tokens(child) == len(self.seqs[parent])
            if "accounting" in on:
                assert (list(m.free_blocks), list(m.evictable_blocks)) == before[:2]

        @precondition(lambda self: self.seqs)
        @rule(data=st.data())
        def free(self, data):
            m = self.m
            sid = self._pick(data, sorted(self.seqs))
            free, ev, cached, _ = self._snapshot()
            table = list(m.block_table(sid))
            m.free(sid)
            self.history.append(tuple(self.seqs.pop(sid)))
            self.dead.append(sid)
            if "accounting" in on:
                refs = self._refs()
                released = [b for b in reversed(table) if refs[b] == 0]  # tail first
                to_ev = [b for b in released if b in cached]
                assert list(m.evictable_blocks) == ev + to_ev, "released out of LRU order"
                assert sorted(m.free_blocks) == sorted(free + [b for b in released
                                                               if b not in cached]), (
                    f"free list {m.free_blocks}: expected {free} + the uncached of {released}")

        @precondition(lambda self: self.dead and "transitions" in on)
        @rule(data=st.data())
        def misuse(self, data):
            m = self.m
            sid = self._pick(data, self.dead)
            state = m.state()
            for call in (lambda: m.free(sid), lambda: m.append(sid, [0]),
                         lambda: m.slot(sid, 0), lambda: m.fork(sid, -1)):
                try:
                    call()
                except UnknownSequenceError as e:
                    assert "freed" in str(e), str(e)
                else:
                    raise AssertionError("a call on a freed sequence succeeded")
            assert m.state() == state

        # ------------------------------------------------------------ invariants

        @invariant()
        def consistent(self):
            m = self.m
            if m is None:
                return
            if manager_checks:
                m.check_invariants()
            if "accounting" in on:
                free, ev = list(m.free_blocks), list(m.evictable_blocks)
                refs = self._refs()
                assert len(set(free)) == len(free), f"a block is free twice: {free}"
                assert not set(free) & set(ev), "a block is both free and evictable"
                assert not (set(free) | set(ev)) & set(refs), "a released block is referenced"
                assert set(free) | set(ev) | set(refs) == set(range(m.num_blocks)), "leaked"
                for b in range(m.num_blocks):
                    assert m.refcount(b) == refs[b], (
                        f"block {b}: refcount {m.refcount(b)}, {refs[b]} tables hold it")
                assert set(ev) <= set(m.cached_blocks), "an evictable block is not cached"
            for s, toks in self.seqs.items():  # each sequence reads back exactly its own KV
                table = m.block_table(s)
                if "transitions" in on:
                    assert m.tokens(s) == tuple(toks)
                    assert len(table) == _cdiv(len(toks), self.B)
                for pos in range(len(toks)):
                    b, off = table[pos // self.B], pos % self.B
                    if "transitions" in on:
                        assert m.slot(s, pos) == (b, off), f"slot({s}, {pos}) = {m.slot(s, pos)}"
                    if "shadow" in on:
                        assert self.kv.get((b, off)) == tuple(toks[:pos + 1]), (
                            f"sequence {s} reads another prefix's KV at position {pos}")
            if "shadow" in on:
                for b in m.cached_blocks:  # a cached block holds the KV of its prefix
                    p = m.cached_prefix(b)
                    for off in range(self.B):
                        assert self.kv.get((b, off)) == p[:len(p) - self.B + off + 1], (
                            f"cached block {b} holds other KV than its prefix {p}")

    return BlockMachine


def test_state_machine():
    runs, steps = RUNS[PROFILE]
    run_state_machine_as_test(machine_for(BlockManager), settings=_settings(
        runs, steps, derandomize=PROFILE != "thorough", shrink=True))


def test_every_plant_is_listed_and_every_group_proven():
    assert set(CATCHES) == set(MUTANTS)
    assert {g for gs in CATCHES.values() for g in gs} == set(GROUPS)


@pytest.mark.parametrize("name, group", [(n, g) for n in sorted(CATCHES) for g in CATCHES[n]])
def test_state_machine_catches(name, group):
    """One group of the machine's checks, alone (the manager's check_invariants off), fails
    on the planted bug."""
    machine = machine_for(MUTANTS[name], checks=(group,), manager_checks=False)
    with pytest.raises(AssertionError):
        run_state_machine_as_test(machine, settings=_settings(
            *MUTANT_RUNS, derandomize=True, shrink=False))


# ---------------------------------------------------------------- hand-worked scenarios
# Each takes the manager class, so that they run on the real one (must pass) and on every
# planted bug (at least one must fail). Free lists start 0, 1, 2, ... and are taken from the
# head; blocks are released tail first.


def shared_prefix(cls):
    # B = 4. a: 11 tokens -> blocks 0,1,2 (4+4+3), full 0 and 1 cached. b shares 9 tokens with
    # a: 2 full blocks (8 tokens) plus one token of a partial block, which is never a hit.
    # Hits are capped at (10-1)//4 = 2: b hits blocks 0 and 1, its third block is fresh (3).
    m = cls(8, 4)
    assert m.allocate("a", [1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 21]) == 0
    assert m.allocate("b", [1, 2, 3, 4, 5, 6, 7, 8, 9, 30]) == 8
    assert m.block_table("a") == (0, 1, 2) and m.block_table("b") == (0, 1, 3)
    assert [m.refcount(b) for b in range(8)] == [2, 2, 1, 1, 0, 0, 0, 0]
    assert m.num_cache_hits == 2 and m.free_blocks == (4, 5, 6, 7)
    assert m.slot("b", 9) == (3, 1)  # position 9: logical block 9//4 = 2 -> 3, offset 9%4 = 1
    assert m.slot("a", 5) == (1, 1)
    m.check_invariants()


def forced_collision(cls):
    # Every block hashes to 0. a's first block (1,2,3,4) is cached under 0; b's first block
    # (5,6,7,8) finds hash 0 but another prefix: a miss, counted; b's full block is not cached
    # (hash 0 is taken).
    m = cls(6, 4, hash_fn=lambda parent, tokens: 0)
    m.allocate("a", [1, 2, 3, 4, 5])
    assert m.allocate("b", [5, 6, 7, 8, 9]) == 0
    assert m.block_table("b") == (2, 3) and m.refcount(0) == 1
    assert m.num_hash_collisions == 1 and m.num_cache_hits == 0
    assert m.cached_blocks == (0,)
    m.check_invariants()


def deep_collision(cls):
    # B = 2, a hash of the block's tokens only (not chained): sum(tokens).
    # p = (1,1 | 7): block 0 cached under 2.  y = (0,2 | 5,5 | 9): block 0 hashes to 2 but
    # holds another prefix: miss; y's (5,5) block 3 is cached under 10 with prefix (0,2,5,5).
    # z = (1,1 | 5,5 | 9): block 0 hits p's block 0; block 1 hashes to 10, block 3 holds the
    # same two tokens after another first block: a miss. So z computes from position 2.
    m = cls(8, 2, hash_fn=lambda parent, tokens: sum(tokens))
    m.allocate("p", [1, 1, 7])
    assert m.allocate("y", [0, 2, 5, 5, 9]) == 0
    assert m.block_table("y") == (2, 3, 4) and m.cached_prefix(3) == (0, 2, 5, 5)
    assert m.allocate("z", [1, 1, 5, 5, 9]) == 2
    assert m.block_table("z") == (0, 5, 6)
    assert m.num_hash_collisions == 2 and m.num_cache_hits == 1
    m.check_invariants()


def full_hit_recomputes_last_block(cls):
    # B = 4, a = 1..8: two full blocks 0, 1, both cached. Freed tail first: evictable (1, 0).
    # b = a again: at most (8-1)//4 = 1 block hits (block 0); the last block is recomputed in
    # fresh block 2, whose hash is already cached (block 1), so block 2 stays uncached.
    # c = a + (9,): (9-1)//4 = 2 blocks hit: 0 (shared with b) and 1 (out of the evictable).
    m = cls(6, 4)
    a = [1, 2, 3, 4, 5, 6, 7, 8]
    m.allocate("a", a)
    m.free("a")
    assert m.evictable_blocks == (1, 0) and m.free_blocks == (2, 3, 4, 5)
    assert m.allocate("b", a) == 4 and m.num_computed_tokens("b") == 4
    assert m.block_table("b") == (0, 2) and m.evictable_blocks == (1,)
    assert m.block_hash(2) is None and set(m.cached_blocks) == {0, 1}
    assert m.allocate("c", a + [9]) == 8
    assert m.block_table("c") == (0, 1, 3) and m.evictable_blocks == ()
    assert m.num_cache_hits == 3 and m.refcount(0) == 2
    m.check_invariants()


def fork_and_copy_on_write(cls):
    # B = 4, p = 1..6 in blocks (0, 1); block 1 holds 2 tokens. The fork c shares both.
    m = cls(8, 4)
    m.allocate("p", [1, 2, 3, 4, 5, 6])
    m.fork("p", "c")
    assert m.refcount(0) == m.refcount(1) == 2 and m.num_computed_tokens("c") == 6
    assert m.blocks_needed_to_append("c", 1) == 1  # no new block, one copy
    assert m.blocks_needed_to_append("c", 3) == 2  # 9 tokens -> 3 blocks, plus the copy
    # c writes position 6 into shared, partly filled block 1: copied to fresh block 2 first.
    assert m.append("c", [7]) == [(1, 2)]
    assert m.block_table("c") == (0, 2) and m.refcount(1) == 1 and m.refcount(2) == 1
    assert m.slot("c", 6) == (2, 2)  # 6//4 = 1 -> block 2, offset 6%4 = 2
    assert m.append("p", [8]) == []  # block 1 is p's alone now
    assert m.slot("p", 6) == (1, 2)
    m.append("c", [8])  # c's block 2 fills: cached with c's chain, like any block
    assert m.cached_prefix(2) == (1, 2, 3, 4, 5, 6, 7, 8)
    # A fork at a block boundary: the next write takes a new block, nothing is copied.
    m.allocate("q", [1, 2, 3, 4])  # (4-1)//4 = 0 hits: fresh block 3
    m.fork("q", "r")
    assert m.append("r", [5]) == [] and m.block_table("r") == (3, 4)
    # p frees: its block 1 (uncached) is free again; block 0 stays, c holds it. Free list:
    # 0, 1 went to p, 2 to the copy, 3 to q, 4 to r: (5, 6, 7), then 1 at the tail.
    m.free("p")
    assert m.refcount(1) == 0 and m.refcount(0) == 1 and m.free_blocks == (5, 6, 7, 1)
    assert m.evictable_blocks == ()
    m.free("c")  # tail first: block 2 then block 0, both cached
    assert m.evictable_blocks == (2, 0)
    m.free("q")  # block 3: r still holds it
    assert m.refcount(3) == 1 and m.free_blocks == (5, 6, 7, 1)
    m.free("r")  # tail first: 4 (partial), then 3 (full, but a duplicate of block 0: uncached)
    assert m.free_blocks == (5, 6, 7, 1, 4, 3) and m.evictable_blocks == (2, 0)
    m.check_invariants()


def lru_eviction(cls):
    # B = 2, 7 blocks. keep = (9,9 | 1) -> (0, 1), block 0 cached first and kept referenced.
    # a = (1,2 | 3) -> (2, 3), b = (4,5 | 6) -> (4, 5). Freed a then b, tails first:
    # evictable (2, 4), free (6, 3, 5).
    m = cls(7, 2)
    m.allocate("keep", [9, 9, 1])
    m.allocate("a", [1, 2, 3])
    m.allocate("b", [4, 5, 6])
    m.free("a")
    m.free("b")
    assert m.evictable_blocks == (2, 4) and m.free_blocks == (6, 3, 5)
    # c needs 4 blocks, no hit: the 3 free ones, then the LRU evictable block 2 (not block 0,
    # the oldest cached one, which keep still holds).
    m.allocate("c", [7, 8, 7, 9, 7, 1, 0])
    assert m.block_table("c") == (6, 3, 5, 2) and m.evictable_blocks == (4,)
    # block 2 was evicted and now holds c's partial last block (0,): uncached
    assert m.cached_prefix(2) is None and m.cached_prefix(5) == (7, 8, 7, 9, 7, 1)
    # d = (4,5 | 0) hits block 4 and needs one fresh block: 2 blocks from a pool of 1.
    assert m.blocks_needed_to_allocate([4, 5, 0]) == 2 and not m.can_allocate([4, 5, 0])
    m.free("keep")  # block 1 -> free, block 0 -> evictable
    assert m.evictable_blocks == (4, 0) and m.free_blocks == (1,)
    assert m.allocate("d", [4, 5, 0]) == 2 and m.block_table("d") == (4, 1)
    assert m.evictable_blocks == (0,)
    m.check_invariants()


def out_of_blocks(cls):
    # 2 blocks of 2: a 5-token prompt needs 3.
    m = cls(2, 2)
    with pytest.raises(OutOfBlocksError, match="needs 3 blocks, only 2 available"):
        m.allocate("x", [1, 2, 3, 4, 5])
    assert m.state() == cls(2, 2).state()
    m.allocate("a", [1, 2, 3])
    m.fork("a", "b")
    # b: 3 -> 6 tokens takes one new block and a copy of the shared last block: 2 > 0 free
    assert m.blocks_needed_to_append("b", 3) == 2 and m.can_append("b", 0)
    state = m.state()
    with pytest.raises(OutOfBlocksError, match="needs 2 blocks, only 0 available"):
        m.append("b", [4, 5, 6])
    assert m.state() == state
    m.check_invariants()


def caching_off(cls):
    m = cls(6, 2, prefix_caching=False)
    m.allocate("a", [1, 2, 3, 4, 5])
    assert m.allocate("b", [1, 2, 3, 4, 5]) == 0 and m.num_cache_hits == 0
    m.free("a")
    assert m.cached_blocks == () and m.evictable_blocks == () and m.free_blocks == (2, 1, 0)
    m.check_invariants()


def speculative_drafts(cls):
    # B = 2. a: prompt 1 2 3 (blocks 0, 1; block 0 cached). A verify chunk: settled token 4
    # and drafts 5 6 7 -> tokens 1..7 in blocks 0, 1, 2, 3; only block 1 (3 4, settled) is
    # cached. b with prompt 1 2 3 4 5 6 9 hits blocks 0 and 1 only: block 2 holds drafts.
    # Settling one draft (5) keeps 1..5 in blocks 0, 1, 2, releases 3 to the free list, and
    # leaves block 2 (5 and a stale slot) uncached until it fills with settled tokens.
    m = cls(8, 2)
    m.allocate("a", [1, 2, 3])
    assert m.append("a", [4, 5, 6, 7], provisional=3) == []
    assert m.block_table("a") == (0, 1, 2, 3) and m.num_provisional_tokens("a") == 3
    assert sorted(m.cached_blocks) == [0, 1]
    with pytest.raises(ValueError, match="provisional"):
        m.append("a", [8])
    with pytest.raises(ValueError, match="provisional"):
        m.fork("a", "c")
    assert m.allocate("b", [1, 2, 3, 4, 5, 6, 9]) == 4
    assert m.block_table("b") == (0, 1, 4, 5)
    with pytest.raises(ValueError, match="num_tokens"):
        m.settle("a", 3)  # below the settled tokens
    m.settle("a", 5)
    assert m.tokens("a") == (1, 2, 3, 4, 5) and m.block_table("a") == (0, 1, 2)
    assert m.free_blocks == (6, 7, 3) and sorted(m.cached_blocks) == [0, 1, 4]
    m.append("a", [8])
    assert sorted(m.cached_blocks) == [0, 1, 2, 4] and m.cached_prefix(2) == (1, 2, 3, 4, 5, 8)
    m.check_invariants()


SCENARIOS = {f.__name__: f for f in (shared_prefix, forced_collision, deep_collision,
                                     full_hit_recomputes_last_block, fork_and_copy_on_write,
                                     lru_eviction, out_of_blocks, caching_off,
                                     speculative_drafts)}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario(name):
    SCENARIOS[name](BlockManager)


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_scenarios_catch(name):
    failed = []
    for scenario, run in SCENARIOS.items():
        try:
            run(MUTANTS[name])
        except AssertionError:
            failed.append(scenario)
    assert failed, f"no hand-worked scenario fails on {name}"


# ---------------------------------------------------------------- hash, errors, invariants


def test_sha256_block_hash_encoding():
    # the documented encoding, written out: parent || count || ids, 8-byte little-endian
    def le(x):
        return x.to_bytes(8, "little")

    h0 = hashlib.sha256(bytes(32) + le(2) + le(1) + le(2)).digest()
    assert ROOT_HASH == bytes(32) and sha256_block_hash(None, (1, 2)) == h0
    h1 = hashlib.sha256(h0 + le(2) + le(3) + le(4)).digest()
    assert sha256_block_hash(h0, (3, 4)) == h1 != sha256_block_hash(None, (3, 4))
    m = BlockManager(4, 2)
    m.allocate("s", [1, 2, 3, 4, 5])
    assert (m.block_hash(0), m.block_hash(1), m.block_hash(2)) == (h0, h1, None)
    with pytest.raises(TypeError, match="parent"):
        sha256_block_hash(b"short", (1,))


def _misuse_cases():
    m = BlockManager(4, 2)
    m.allocate("a", [1, 2, 3])
    m.allocate("gone", [1])
    m.free("gone")
    return m, [
        (lambda: BlockManager(0, 2), ValueError, "num_blocks: expected an integer >= 1"),
        (lambda: BlockManager(4, 1.5), TypeError, "block_size: expected an integer"),
        (lambda: BlockManager(4, True), TypeError, "block_size"),
        (lambda: BlockManager(4, 2, hash_fn=3), TypeError, "hash_fn"),
        (lambda: m.free("nope"), UnknownSequenceError, "'nope' is not allocated$"),
        (lambda: m.append("gone", [1]), UnknownSequenceError, "'gone' is not allocated .*freed"),
        (lambda: m.fork("gone", "x"), UnknownSequenceError, "parent_id: .*freed"),
        (lambda: m.fork("a", "a"), ValueError, "child_id: sequence 'a' is already allocated"),
        (lambda: m.allocate("a", [1]), ValueError, "seq_id: sequence 'a' is already allocated"),
        (lambda: m.allocate("n", []), ValueError, "tokens: expected at least one token"),
        (lambda: m.allocate("n", [1, -1]), ValueError, r"tokens\[1\] = -1"),
        (lambda: m.allocate("n", [1, 2.0]), ValueError, r"tokens\[1\] = 2.0"),
        (lambda: m.allocate("n", "abc"), TypeError, "tokens: expected a sequence"),
        (lambda: m.allocate([1], [1]), TypeError, "seq_id: expected a hashable"),
        (lambda: m.append("a", [2**63]), ValueError, r"tokens\[0\]"),
        (lambda: m.slot("a", 3), IndexError, r"pos: expected an integer in \[0, 3\)"),
        (lambda: m.slot("a", -1), IndexError, "pos"),
        (lambda: m.refcount(4), IndexError, r"block: expected an integer in \[0, 4\)"),
        (lambda: m.blocks_needed_to_append("a", -1), ValueError, "num_tokens"),
    ]


@pytest.mark.parametrize("i", range(len(_misuse_cases()[1])))
def test_misuse_is_a_clear_error(i):
    m, cases = _misuse_cases()
    call, exc, match = cases[i]
    state = m.state()
    with pytest.raises(exc, match=match):
        call()
    assert m.state() == state  # nothing changed


def test_numpy_tokens_accepted():
    import numpy as np

    m = BlockManager(4, 2)
    m.allocate("a", np.array([1, 2, 3], dtype=np.int32))
    m.append("a", np.array([4], dtype=np.int64))
    assert m.tokens("a") == (1, 2, 3, 4) and m.append("a", []) == []


@pytest.mark.parametrize("corrupt, match", [
    (lambda m: m._ref.__setitem__(0, 2), "block 0: refcount 2, but 1 tables hold it"),
    (lambda m: m._free.append(3), "a block is in the free list twice"),
    (lambda m: m._free.append(0), "block 0 is in 2 of"),
    (lambda m: m._tables["a"].append(3), "refcount 0, but 1 tables"),
    (lambda m: m._prefix_of.__setitem__(0, (9, 9)), "holds another prefix"),
    (lambda m: m._cache.clear(), "hash -> block map"),
])
def test_check_invariants_can_fail(corrupt, match):
    m = BlockManager(4, 2)
    m.allocate("a", [1, 2, 3])
    m.check_invariants()
    corrupt(m)
    with pytest.raises(InvariantError, match=match):
        m.check_invariants()
