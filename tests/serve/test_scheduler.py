"""The continuous-batching scheduler, driven by hypothesis-drawn workloads through a simulated
engine: budgets never exceeded, every position computed exactly once per admission and in
order, admissions first-come first-served, every request finishes, the block manager's
invariants hold after every step; plus hand-worked decisions. Planted scheduler bugs are
caught by the same checks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmspec.serve.blocks import BlockManager
from lmspec.serve.scheduler import FINISHED, RUNNING, Chunk, Scheduler


def _token(seq_id, i: int) -> int:
    return (hash((seq_id, i)) % 97) + 1  # any deterministic token


workloads = st.lists(st.tuples(st.integers(1, 40),    # prompt length
                               st.integers(1, 12),    # max_tokens
                               st.integers(0, 6)),    # arrival step
                     min_size=1, max_size=10)


def simulate(sched_cls, work, *, num_blocks, block_size, max_num_seqs, max_tokens,
             prefix_caching=True, max_steps=2000):
    """Runs ``work`` to completion; asserts the properties after every step; returns the
    per-request outputs and the decisions."""
    bm = BlockManager(num_blocks, block_size, prefix_caching=prefix_caching)
    s = sched_cls(bm, max_num_seqs=max_num_seqs, max_tokens=max_tokens)
    arrivals = sorted(range(len(work)), key=lambda i: (work[i][2], i))
    admitted_order, decisions = [], []
    step = 0
    pending = list(arrivals)
    while pending or s.has_work():
        while pending and work[pending[0]][2] <= step:
            i = pending.pop(0)
            s.add(i, [(i * 7 + j) % 50 + 1 for j in range(work[i][0])], work[i][1])
        before = {k: v.num_computed for k, v in s.seqs.items()}
        d = s.schedule()
        decisions.append(d)
        assert d.num_tokens <= max_tokens, "token budget exceeded"
        assert len(s.running) <= max_num_seqs, "sequence budget exceeded"
        assert len({c.seq_id for c in d.chunks}) == len(d.chunks), "a sequence twice in a step"
        for c in d.chunks:
            seq = s.seqs[c.seq_id]
            start = 0 if c.seq_id in d.preempted else before[c.seq_id]
            if c.seq_id in d.admitted:
                start = d.cached_tokens[c.seq_id]
            assert c.start == start, f"chunk of {c.seq_id} starts at {c.start}, not {start}"
            assert list(c.tokens) == seq.tokens[c.start:c.start + len(c.tokens)]
            assert c.samples == (c.start + len(c.tokens) == seq.num_tokens)
            assert bm.num_tokens(c.seq_id) == c.start + len(c.tokens)
        admitted_order += list(d.admitted)
        bm.check_invariants()
        s.update({c.seq_id: _token(c.seq_id, s.seqs[c.seq_id].num_tokens)
                  for c in d.chunks if c.samples})
        bm.check_invariants()
        step += 1
        assert step < max_steps, "no progress: a request starves or the scheduler loops"
    assert all(v.status == FINISHED for v in s.seqs.values())
    assert not bm.sequences  # every block released
    firsts = list(dict.fromkeys(admitted_order))
    assert firsts == sorted(firsts, key=lambda i: (s.seqs[i].arrival,)), "not FCFS"
    return {k: list(v.output) for k, v in s.seqs.items()}, decisions


@settings(deadline=None)
@given(work=workloads, block_size=st.sampled_from([1, 2, 4, 8]),
       max_num_seqs=st.integers(1, 5), max_tokens=st.integers(1, 48),
       spare=st.integers(0, 12))
def test_budgets_order_and_completion(work, block_size, max_num_seqs, max_tokens, spare):
    # the pool holds the largest request (the scheduler refuses larger ones) + spare blocks:
    # small pools force preemptions
    need = max(-(-(p + m) // block_size) for p, m, _ in work)
    out, _ = simulate(Scheduler, work, num_blocks=need + spare, block_size=block_size,
                      max_num_seqs=max_num_seqs, max_tokens=max_tokens)
    for i, (_, m, _) in enumerate(work):
        assert len(out[i]) == m


@settings(deadline=None)
@given(work=workloads, block_size=st.sampled_from([2, 4]))
def test_outputs_do_not_depend_on_budgets_or_preemption(work, block_size):
    """The simulated tokens depend only on (request, position): any schedule gives the same
    outputs, so preemption by recompute resumes to the same output."""
    need = max(-(-(p + m) // block_size) for p, m, _ in work)
    roomy, _ = simulate(Scheduler, work, num_blocks=need * len(work),
                        block_size=block_size, max_num_seqs=16, max_tokens=512)
    tight, ds = simulate(Scheduler, work, num_blocks=need, block_size=block_size,
                         max_num_seqs=3, max_tokens=7)
    assert roomy == tight


def test_chunked_prefill_mixes_with_decodes_by_hand():
    bm = BlockManager(64, 4)
    s = Scheduler(bm, max_num_seqs=4, max_tokens=8)
    s.add("a", [1, 2, 3], 3)
    d = s.schedule()  # a's whole prompt
    assert d.chunks == (Chunk("a", 0, (1, 2, 3), True),) and d.admitted == ("a",)
    s.update({"a": 9})
    s.add("b", list(range(1, 21)), 2)  # 20 tokens: chunks of 7, 8, 5 around a's decodes
    d = s.schedule()
    assert [(c.seq_id, c.start, len(c.tokens), c.samples) for c in d.chunks] == [
        ("a", 3, 1, True), ("b", 0, 7, False)]
    s.update({"a": 9})
    d = s.schedule()
    assert [(c.seq_id, c.start, len(c.tokens), c.samples) for c in d.chunks] == [
        ("a", 4, 1, True), ("b", 7, 7, False)]
    s.update({"a": 9})  # a finishes (max_tokens 3)
    assert s.seqs["a"].status == FINISHED and "a" not in bm.sequences
    d = s.schedule()
    assert [(c.seq_id, c.start, len(c.tokens), c.samples) for c in d.chunks] == [
        ("b", 14, 6, True)]


def test_preemption_by_recompute_by_hand():
    bm = BlockManager(4, 2)  # 8 slots
    s = Scheduler(bm, max_num_seqs=4, max_tokens=16)
    s.add("a", [1, 2, 3], 4)  # a: 2 blocks now
    s.add("b", [4, 5, 6], 4)  # b: 2 blocks now: the pool is full
    d = s.schedule()
    assert d.admitted == ("a", "b")
    s.update({"a": 7, "b": 8})
    d = s.schedule()  # the 4th tokens fill the second blocks
    assert d.preempted == () and [len(c.tokens) for c in d.chunks] == [1, 1]
    s.update({"a": 7, "b": 8})
    d = s.schedule()  # a's 5th token needs a third block: none is free
    assert d.preempted == ("b",)  # the latest arrival goes, and is recomputed later
    assert s.seqs["b"].status == "waiting" and s.seqs["b"].output == [8, 8]
    assert [c.seq_id for c in d.chunks] == ["a"] and bm.num_available_blocks == 1
    s.update({"a": 7})
    d = s.schedule()  # a decodes; b (6 tokens, 3 blocks) waits for blocks
    assert [c.seq_id for c in d.chunks] == ["a"] and d.admitted == ()


def test_errors():
    bm = BlockManager(4, 2)
    s = Scheduler(bm)
    with pytest.raises(ValueError, match="max_tokens"):
        s.add("x", [1], 0)
    with pytest.raises(ValueError, match="blocks"):
        s.add("x", [1] * 8, 1)  # 9 tokens need 5 blocks of 2, the pool has 4
    with pytest.raises(ValueError, match="prompt"):
        s.add("x", [], 1)
    s.add("x", [1], 1)
    with pytest.raises(ValueError, match="already"):
        s.add("x", [1], 1)
    with pytest.raises(ValueError, match="max_num_seqs"):
        Scheduler(bm, max_num_seqs=0)


def test_abort_frees_at_once():
    bm = BlockManager(8, 2)
    s = Scheduler(bm)
    s.add("a", [1, 2, 3], 5)
    s.schedule()
    assert s.seqs["a"].status == RUNNING and bm.sequences == ("a",)
    s.abort("a")
    assert s.seqs["a"].status == FINISHED and not bm.sequences and not s.has_work()
    bm.check_invariants()


# ----------------------------------------------------------------------------- plants


class _NoFcfs(Scheduler):
    """Admits whichever waiting request fits (overtaking the head): starves long prompts."""

    def schedule(self):
        if len(self.waiting) > 1:
            self.waiting.rotate(-1)
        return super().schedule()


class _DropsLastPromptToken(Scheduler):
    """Chunked prefill that skips the chunk's last token: a chunk ending mid-prompt claims
    one token more than it computes."""

    def schedule(self):
        d = super().schedule()
        for c in d.chunks:
            if not c.samples and len(c.tokens) > 1:
                s = self.seqs[c.seq_id]
                s.num_computed += 1  # the next chunk starts one token late
        return d


class _IgnoresTokenBudget(Scheduler):
    def schedule(self):
        self.max_tokens, saved = self.max_tokens + 5, self.max_tokens
        try:
            return super().schedule()
        finally:
            self.max_tokens = saved


@pytest.mark.parametrize("plant", [_NoFcfs, _DropsLastPromptToken, _IgnoresTokenBudget])
def test_planted_scheduler_bugs_are_caught(plant):
    work = [(30, 3, 0), (2, 3, 0), (25, 4, 1), (3, 2, 1), (17, 5, 2)]
    with pytest.raises(AssertionError):
        simulate(plant, work, num_blocks=12, block_size=4, max_num_seqs=2, max_tokens=8)
    simulate(Scheduler, work, num_blocks=12, block_size=4, max_num_seqs=2, max_tokens=8)
