"""Test-time compute over a ``Runner`` (serve/speculative.py): best-of-N with a scorer,
self-consistency (Wang et al., 2022: a majority vote over sampled answers), beam search on
copy-on-write KV blocks, and a thinking budget (s1's budget forcing, Muennighoff et al., 2025).

    r = Runner(config, params)                               # any backend
    best_of_n(r, prompt, 8, scorer=None, params=SamplingParams(temperature=0.8), seed=0)
    self_consistency(r, prompt, 8, extract_answer=f, params=..., seed=0).answer
    beam_search(r, prompt, beam_width=4, max_new_tokens=16, eos_id=0)[0].tokens
    generate_with_thinking_budget(r, prompt, think_end_id=7, budget=32, params=...)

Sampling uses the engine's sampler (serve/engine.py ``processed_logprobs`` and ``pick``).
Sample i of best-of-N and self-consistency draws its output token t with the uniform
``default_rng([seed, i, t]).random()``: its stream depends on (seed, i, t) only, so sample i
is the same for every n. The thinking budget uses the engine's own ``uniform(seed, t)``.

Models with recurrent layers are refused (``Runner`` refuses them; beam search also names
``model``): their state is not paged and has no copy-on-write.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from lmspec.serve.blocks import BlockManager
from lmspec.serve.engine import SamplingParams, _host_dtype, pick, processed_logprobs, uniform
from lmspec.serve.kv import PagedKV, has_recurrent_state
from lmspec.serve.speculative import Runner


@dataclass
class Candidate:
    tokens: list[int]  # the new tokens (the prompt excluded)
    logprobs: list[float]  # each token's log-probability under the model (unprocessed)
    score: float


def _check_count(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return int(value)


def _prompt(model: Runner, prompt_ids: Sequence[int]) -> list[int]:
    vocab = model.config.vocab_size
    prompt = [int(t) for t in prompt_ids]
    if not prompt or any(not 0 <= t < vocab for t in prompt):
        raise ValueError(f"prompt_ids: expected at least one token id in [0, {vocab})")
    return prompt


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    return z - z.max() - np.log(np.exp(z - z.max()).sum())


def sample(model: Runner, prompt: list[int], params: SamplingParams,
           u: Callable[[int], float], eos_id: int | None = None) -> Candidate:
    """One sampled continuation; ``u(t)`` is the uniform of output token t. Stops at
    ``max_tokens``, a stop token or ``eos_id`` (included). Score: mean model log-prob."""
    out, lps = [], []
    while len(out) < params.max_tokens:
        logits = model.logits(prompt + out, 1)[0]
        logp = processed_logprobs(logits, params, prompt, out)
        t = int(np.argmax(logp)) if params.temperature == 0 else pick(logp, u(len(out)))
        out.append(t)
        lps.append(float(_log_softmax(logits)[t]))
        if t in params.stop_token_ids or (t == eos_id and not params.ignore_eos):
            break
    return Candidate(out, lps, float(np.mean(lps)))


def _stream(seed: int, i: int, n: int) -> Callable[[int], float]:
    """Sample i's uniforms: a function of (seed, i, t) alone, never of n."""
    return lambda t: float(np.random.default_rng([seed, i, t]).random())


@dataclass
class BestOfN:
    candidates: list[Candidate]
    best: int  # index of the highest score, ties to the lowest index


def best_of_n(model: Runner, prompt_ids: Sequence[int], n: int, *,
              scorer: Callable[[list[int]], float] | None = None,
              params: SamplingParams | None = None, seed: int = 0,
              eos_id: int | None = None) -> BestOfN:
    """n independent samples, each scored by ``scorer(new token ids) -> float`` (decode
    inside it to score text) or, without one, by its mean log-prob under the model
    (unprocessed: temperature and filters do not change the score). ``best`` is the argmax,
    ties broken by the lowest index."""
    n = _check_count("n", n, 1)
    prompt, params = _prompt(model, prompt_ids), params or SamplingParams()
    cands = []
    for i in range(n):
        c = sample(model.fork(), prompt, params, _stream(seed, i, n), eos_id)
        if scorer is not None:
            c.score = float(scorer(list(c.tokens)))
        cands.append(c)
    scores = [c.score for c in cands]
    return BestOfN(cands, int(np.argmax(scores)))  # np.argmax takes the first maximum


@dataclass
class Vote:
    answer: Hashable | None  # the majority answer (None when no sample has one)
    counts: dict  # answer -> votes, in order of first occurrence
    answers: list  # each sample's extracted answer (None: none extracted)
    candidates: list[Candidate]


def self_consistency(model: Runner, prompt_ids: Sequence[int], n: int, *,
                     extract_answer: Callable[[list[int]], Hashable | None],
                     params: SamplingParams | None = None, seed: int = 0,
                     eos_id: int | None = None) -> Vote:
    """A majority vote over the answers ``extract_answer(new token ids)`` of n samples (drawn
    as by ``best_of_n``); None answers cast no vote; ties go to the answer seen first."""
    res = best_of_n(model, prompt_ids, n, params=params, seed=seed, eos_id=eos_id)
    answers = [extract_answer(list(c.tokens)) for c in res.candidates]
    winner, counts = majority_vote(answers)
    return Vote(winner, counts, answers, res.candidates)


def majority_vote(answers: Sequence[Hashable | None]) -> tuple[Hashable | None, dict]:
    """(the most frequent non-None answer, ties to the first seen; votes per answer in order
    of first occurrence); (None, {}) when every answer is None."""
    counts: dict = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    top = max(counts.values(), default=0)
    return next((a for a, k in counts.items() if k == top), None), counts  # dicts keep order


# ---------------------------------------------------------------- beam search


class PagedModel:
    """The model over a paged KV store (serve/kv.py ``PagedKV``) whose blocks the block
    manager assigns: ``extend`` computes a sequence's positions ``start ..`` from its gathered
    blocks and writes them back through its block table; copy-on-write copies are done by
    ``append``. The manager is the allocator of record: KV lives only in its blocks."""

    def __init__(self, model: Runner, blocks: BlockManager):
        self.m, self.blocks = model, blocks
        self.kv = PagedKV(model.config, blocks.num_blocks, blocks.block_size,
                          _host_dtype(model.dtype))

    def extend(self, seq: Hashable, start: int) -> np.ndarray:
        """(V,) float64 logits after the sequence's last token; computes ``start ..``."""
        b, table = self.m.b, self.blocks.block_table(seq)
        toks = self.blocks.tokens(seq)
        caches = self.kv.gather(seq, table, start)
        if caches is not None:
            caches = [{n: b.asarray(a, self.m.dtype) for n, a in layer.items()}
                      for layer in caches]
        tok = b.asarray(np.asarray([toks[start:]], np.int64), None)
        pos = b.asarray(np.arange(start, len(toks))[None], None)
        lg, new = b.fn("model")(self.m.p, tok, pos, caches=caches, config=self.m.config,
                                use_cache=True)
        self.kv.write(seq, table, start, [{n: b.to_numpy(a) for n, a in layer.items()}
                                          for layer in new])
        return np.asarray(b.to_numpy(lg), np.float64)[0, -1]

    def append(self, seq: Hashable, token: int) -> np.ndarray:
        start = self.blocks.num_tokens(seq)
        for src, dst in self.blocks.append(seq, [token]):
            self.kv.copy(src, dst)
        return self.extend(seq, start)


@dataclass
class Beam:
    tokens: list[int]  # the new tokens (an EOS included)
    logprobs: list[float]  # each token's model log-prob
    sum_logprob: float  # the running score
    score: float  # sum_logprob / len(tokens) ** length_penalty: the final ranking
    finished: bool  # ended with eos_id


def _expand(beams, logits, width):
    """The ``width`` best (running score, beam index, token) over every live beam's tokens
    and every finished beam carried over; ties to the lower beam index, then token id."""
    cands = []
    for i, (bm, lg) in enumerate(zip(beams, logits)):
        if bm.finished:
            cands.append((bm.sum_logprob, i, -1, 0.0))
            continue
        logp = _log_softmax(lg)
        cands += [(bm.sum_logprob + float(logp[t]), i, t, float(logp[t]))
                  for t in range(logp.size)]
    cands.sort(key=lambda c: (-c[0], c[1], c[2]))
    return cands[:width]


def _free_pruned(blocks: BlockManager, seqs: list, live: dict) -> None:
    """Frees the sequence of every beam that no kept successor goes on from."""
    for i, s in enumerate(seqs):
        if s is not None and i not in live:
            blocks.free(s)


def beam_search(model: Runner, prompt_ids: Sequence[int], beam_width: int,
                max_new_tokens: int, *, length_penalty: float = 1.0,
                eos_id: int | None = None, block_size: int = 4,
                on_step: Callable[[BlockManager], None] | None = None) -> list[Beam]:
    """Deterministic beam search; returns up to ``beam_width`` beams, best first.

    Every step ranks each live beam's extensions by the running score (the sum of the
    model's log-probs) together with the finished beams (ending in ``eos_id``, kept with
    their score), keeps the ``beam_width`` best (ties: lower beam index, then token id),
    and stops after ``max_new_tokens`` or when no beam is live. The final ranking is
    ``sum_logprob / len(new tokens) ** length_penalty``, HF's convention (the length counts
    the generated tokens, the EOS included, not the prompt). Differences from HF's
    ``BeamSearchScorer``: HF keeps ``num_beams`` live beams and moves finished ones to a
    separate list ranked by the normalized score (with ``early_stopping``); here a finished
    beam holds its slot while its running score is among the best. With no pruning (width
    >= V**steps) both equal the exhaustive argmax of the final score.

    KV: the prompt's blocks are computed once and shared by every beam through the block
    manager's ``fork`` (refcounts); a beam kept by k successors forks k - 1 times, a write to
    a shared last block copies it first (copy-on-write), a pruned or finished beam frees its
    blocks. The KV lives in a host ``PagedKV`` laid out by the manager's block tables.
    ``on_step(blocks)`` is called after the prefill and after every step.
    """
    if has_recurrent_state(model.config):
        raise ValueError("model: beam search needs paged caches; lightning (recurrent) "
                         "layers have none")
    width = _check_count("beam_width", beam_width, 1)
    steps = _check_count("max_new_tokens", max_new_tokens, 1)
    prompt = _prompt(model, prompt_ids)
    per_seq = -(-(len(prompt) + steps) // block_size)
    blocks = BlockManager(width * per_seq + width, block_size, prefix_caching=False)
    pm = PagedModel(model, blocks)
    ids = iter(range(1 << 62))
    sid = next(ids)
    blocks.allocate(sid, prompt)
    beams = [Beam([], [], 0.0, 0.0, False)]
    seqs, logits = [sid], [pm.extend(sid, 0)]
    if on_step:
        on_step(blocks)
    for _ in range(steps):
        if all(b.finished for b in beams):
            break
        keep = _expand(beams, logits, width)
        live: dict[int, list] = {}  # parent beam -> its kept successors that go on
        for c in keep:
            if c[2] != -1 and c[2] != eos_id:
                live.setdefault(c[1], []).append(c)
        _free_pruned(blocks, seqs, live)
        owner = {}  # fork every child before any append: no child may see a sibling's token
        for i, cs in live.items():
            for c in cs[:-1]:
                owner[id(c)] = next(ids)
                blocks.fork(seqs[i], owner[id(c)])
            owner[id(cs[-1])] = seqs[i]  # the last successor keeps the parent's sequence
        new_beams, new_seqs, new_logits = [], [], []
        for c in keep:
            score, i, t, lp = c
            old = beams[i]
            if t == -1:  # a finished beam carried over
                new_beams.append(old)
                new_seqs.append(None)
                new_logits.append(None)
                continue
            new_beams.append(Beam(old.tokens + [t], old.logprobs + [lp], score, 0.0,
                                  t == eos_id))
            s = owner.get(id(c))
            new_seqs.append(s)
            new_logits.append(None if s is None else pm.append(s, t))
        beams, seqs, logits = new_beams, new_seqs, new_logits
        if on_step:
            on_step(blocks)
    for s in seqs:
        if s is not None:
            blocks.free(s)
    if on_step:
        on_step(blocks)
    for b in beams:
        b.score = b.sum_logprob / len(b.tokens) ** length_penalty
    return sorted(beams, key=lambda b: -b.score)  # stable: ties keep the beam order


# ---------------------------------------------------------------- thinking budget


@dataclass
class Thinking:
    tokens: list[int]  # thinking, the end-of-thinking token, then the answer
    num_thinking: int  # tokens before the end-of-thinking token
    forced: bool  # the budget ran out and think_end_id was appended


def generate_with_thinking_budget(model: Runner, prompt_ids: Sequence[int], *,
                                  think_end_id: int, budget: int,
                                  params: SamplingParams | None = None,
                                  eos_id: int | None = None) -> Thinking:
    """s1's budget forcing: at most ``budget`` thinking tokens; if the model has not emitted
    ``think_end_id`` by then, it is appended at output position ``budget`` and generation
    goes on with the answer. ``params.max_tokens`` bounds the answer (the tokens after the
    end of thinking); a stop token or ``eos_id`` ends generation in either phase. Output
    token t is drawn with the engine's uniform ``uniform(seed, t)`` (forced tokens included
    in the count), seed ``params.seed`` (0 if None)."""
    budget = _check_count("budget", budget, 0)
    prompt, params = _prompt(model, prompt_ids), params or SamplingParams()
    if not 0 <= think_end_id < model.config.vocab_size:
        raise ValueError(f"think_end_id: expected an id in [0, {model.config.vocab_size})")
    seed = params.seed if params.seed is not None else 0
    out, n_think, forced, answer = [], None, False, 0
    while answer < params.max_tokens:
        if n_think is None and len(out) == budget:
            out.append(think_end_id)
            n_think, forced = budget, True
            continue
        logp = processed_logprobs(model.logits(prompt + out, 1)[0], params, prompt, out)
        t = int(np.argmax(logp)) if params.temperature == 0 else pick(logp,
                                                                     uniform(seed, len(out)))
        out.append(t)
        if n_think is None:
            if t == think_end_id:
                n_think = len(out) - 1
        else:
            answer += 1
        if t in params.stop_token_ids or (t == eos_id and not params.ignore_eos):
            break
    return Thinking(out, len(out) if n_think is None else n_think, forced)
