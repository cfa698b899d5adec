"""Iteration-level continuous batching (Orca, Yu et al. OSDI 2022; vLLM's scheduler) with
chunked prefill and preemption by recompute, over the paged block manager (serve/blocks.py).
Every decision is data (``Decision``), so that tests and conformance can compare them.

One ``schedule()`` call plans one engine step under two budgets: at most ``max_num_seqs``
sequences and at most ``max_tokens`` new tokens (prefill and decode together):

1. **Running** sequences first, in arrival order. Each asks for its next chunk: one token
   when decoding (its last sampled token, whose KV is not computed yet), else the rest of its
   prompt capped by what is left of the token budget (chunked prefill: a long prompt is
   split across steps and mixed with other sequences' decodes). If the block manager cannot
   hold the chunk, the *latest-arrived* running sequence is preempted (its blocks freed, its
   computed count reset: it is recomputed from its prompt and its output so far when it is
   readmitted, vLLM's recompute preemption) until the chunk fits, or the asker is itself the
   latest and is preempted.
2. **Waiting** sequences then, first come first served (preempted ones first, by arrival):
   the head of the queue is admitted when a sequence slot, token budget and its first
   chunk's blocks are available; if it is not, nothing behind it is admitted either (no
   request can be overtaken forever: no starvation).

A chunk that reaches the end of a sequence's known tokens produces the next token
(``Chunk.samples``). Speculative decoding: a decoding sequence's ``drafts`` (set by the engine
before ``schedule``) ride in its decode chunk after its last token, as provisional tokens of
the block manager (never cached), within the token budget; ``update`` then takes the accepted
drafts and the token drawn after them, and settles the blocks to them.

The scheduler's own state (waiting, running, computed counts) changes
only through ``schedule``, ``update`` (the sampled tokens of a step) and ``abort``.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from lmspec.serve.blocks import BlockManager

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


@dataclass
class SeqState:
    """A request as the scheduler sees it: its tokens (prompt + output so far) and how many
    of them have KV in the cache."""

    seq_id: Hashable
    prompt: tuple[int, ...]
    max_tokens: int
    arrival: int
    output: list[int] = field(default_factory=list)
    num_computed: int = 0
    status: str = WAITING
    num_preemptions: int = 0
    finish_reason: str | None = None
    drafts: list[int] = field(default_factory=list)  # proposed for the next decode chunk
    in_flight: int = 0  # drafts in the chunk of the step being run

    @property
    def tokens(self) -> list[int]:
        return [*self.prompt, *self.output]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)


@dataclass(frozen=True)
class Chunk:
    """Compute positions ``start .. start + len(tokens) - 1`` of ``seq_id``; ``samples``: the
    chunk ends at the sequence's last known token, so its last logits give the next token."""

    seq_id: Hashable
    start: int
    tokens: tuple[int, ...]
    samples: bool
    num_drafts: int = 0  # the last so many tokens are drafts to verify

    @property
    def is_prefill(self) -> bool:
        return not (len(self.tokens) - self.num_drafts == 1 and self.samples and self.start > 0)


@dataclass(frozen=True)
class Decision:
    """One step's plan: the chunks in execution order (decodes and continued prefills of
    running sequences, then newly admitted ones), the preempted and admitted sequences, the
    copy-on-write block copies to make first, and the prefix-cache hits of admissions."""

    chunks: tuple[Chunk, ...]
    preempted: tuple[Hashable, ...] = ()
    admitted: tuple[Hashable, ...] = ()
    copies: tuple[tuple[int, int], ...] = ()
    cached_tokens: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.chunks)


class Scheduler:
    def __init__(self, blocks: BlockManager, *, max_num_seqs: int = 16,
                 max_tokens: int = 256):
        for n, v in (("max_num_seqs", max_num_seqs), ("max_tokens", max_tokens)):
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{n}: expected an integer >= 1, got {v!r}")
        self.blocks = blocks
        self.max_num_seqs, self.max_tokens = max_num_seqs, max_tokens
        self.seqs: dict[Hashable, SeqState] = {}
        self.waiting: deque[Hashable] = deque()
        self.running: list[Hashable] = []
        self._arrivals = itertools.count()

    # ------------------------------------------------------------------ requests

    def add(self, seq_id: Hashable, prompt: Sequence[int], max_tokens: int) -> SeqState:
        if seq_id in self.seqs:
            raise ValueError(f"seq_id: {seq_id!r} is already scheduled")
        prompt = tuple(int(t) for t in prompt)
        if not prompt:
            raise ValueError("prompt: expected at least one token")
        if not (isinstance(max_tokens, int) and max_tokens >= 1):
            raise ValueError(f"max_tokens: expected an integer >= 1, got {max_tokens!r}")
        need = -(-(len(prompt) + max_tokens) // self.blocks.block_size)
        if need > self.blocks.num_blocks:
            raise ValueError(f"prompt + max_tokens: {len(prompt)} + {max_tokens} tokens need "
                             f"{need} blocks, the cache has {self.blocks.num_blocks}")
        s = SeqState(seq_id, prompt, max_tokens, next(self._arrivals))
        self.seqs[seq_id] = s
        self.waiting.append(seq_id)
        return s

    def abort(self, seq_id: Hashable, reason: str = "abort") -> None:
        """Stops a request wherever it is; its blocks are freed at once."""
        s = self.seqs.get(seq_id)
        if s is None or s.status == FINISHED:
            return
        self._finish(s, reason)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ------------------------------------------------------------------ one step

    def schedule(self) -> Decision:
        budget = self.max_tokens
        chunks, preempted, copies = [], [], []
        scheduled: set = set()
        for seq_id in list(self.running):
            if seq_id not in self.running or budget == 0:
                continue  # preempted meanwhile, or no budget left this step
            s = self.seqs[seq_id]
            toks = s.tokens[s.num_computed:s.num_computed + budget]
            decoding = s.num_computed == s.num_tokens - 1
            drafts = list(s.drafts[:budget - 1]) if decoding else []
            toks = toks + drafts
            while not self.blocks.can_append(seq_id, len(toks)):
                victim = next((v for v in reversed(self.running) if v not in scheduled), None)
                self._preempt(self.seqs[victim])
                preempted.append(victim)
                if victim == seq_id:
                    break
            if seq_id not in self.running:
                continue
            copies += self.blocks.append(seq_id, toks, provisional=len(drafts))
            chunks.append(Chunk(seq_id, s.num_computed, tuple(toks),
                                s.num_computed + len(toks) - len(drafts) == s.num_tokens,
                                len(drafts)))
            s.num_computed += len(toks) - len(drafts)
            s.in_flight = len(drafts)
            budget -= len(toks)
            scheduled.add(seq_id)
        admitted, cached = [], {}
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            s = self.seqs[self.waiting[0]]
            toks = s.tokens[:budget]
            if not self.blocks.can_allocate(toks):
                break  # FCFS: nothing overtakes the head of the queue
            self.waiting.popleft()
            hit = self.blocks.allocate(s.seq_id, toks)
            s.num_computed, s.status = hit, RUNNING
            self.running.append(s.seq_id)
            chunks.append(Chunk(s.seq_id, hit, tuple(toks[hit:]), len(toks) == s.num_tokens))
            s.num_computed = len(toks)
            budget -= len(toks) - hit
            admitted.append(s.seq_id)
            cached[s.seq_id] = hit
        return Decision(tuple(chunks), tuple(preempted), tuple(admitted), tuple(copies), cached)

    def update(self, sampled: dict[Hashable, int | Sequence[int]],
               stop: dict[Hashable, str] | None = None) -> list[SeqState]:
        """The tokens sampled in a step (for the chunks that sample): one token, or for a
        chunk with drafts the accepted drafts and the token after them; ``stop`` names
        requests the engine ends after these tokens (a stop id or string: their finish
        reasons). Returns the sequences that finished."""
        stop = stop or {}
        done = []
        for seq_id, tok in sampled.items():
            s = self.seqs[seq_id]
            if s.status != RUNNING:
                raise ValueError(f"sampled: {seq_id!r} is not running ({s.status})")
            new = [int(t) for t in tok] if isinstance(tok, list | tuple) else [int(tok)]
            accepted, k = len(new) - 1, s.in_flight
            if not 0 <= accepted <= k or new[:accepted] != s.drafts[:accepted]:
                raise ValueError(f"sampled: {seq_id!r} expected its accepted drafts (of "
                                 f"{s.drafts[:k]}) and one more token, got {new}")
            if k:
                self.blocks.settle(seq_id, s.num_tokens + accepted)
                s.num_computed += accepted
            s.in_flight, s.drafts = 0, []
            s.output.extend(new)
            reason = stop.get(seq_id) or ("length" if len(s.output) >= s.max_tokens else None)
            if reason:
                self._finish(s, reason)
                done.append(s)
        return done

    # ------------------------------------------------------------------ internals

    def _preempt(self, s: SeqState) -> None:
        self.blocks.free(s.seq_id)
        self.running.remove(s.seq_id)
        s.num_computed, s.status = 0, WAITING
        s.drafts, s.in_flight = [], 0
        s.num_preemptions += 1
        # back to the waiting queue, ahead of every later arrival (FCFS by arrival)
        pos = sum(1 for w in self.waiting if self.seqs[w].arrival < s.arrival)
        self.waiting.insert(pos, s.seq_id)

    def _finish(self, s: SeqState, reason: str) -> None:
        if s.status == RUNNING:
            self.blocks.free(s.seq_id)
            self.running.remove(s.seq_id)
        elif s.seq_id in self.waiting:
            self.waiting.remove(s.seq_id)
        s.status, s.finish_reason = FINISHED, reason
