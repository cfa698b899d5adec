"""Speculative decoding over any backend's ``model``: a proposer drafts gamma tokens, the target
scores them in one forward, and the spec's rejection sampler (spec/rejection_sample.py) keeps
a prefix and draws one more token, so that the output law is the target's own, exactly.

    target = Runner(config, params)                      # any backend; caches roll back
    dec = SpeculativeDecoder(target, NgramProposer(), gamma=4)
    ids = dec.generate(prompt, SamplingParams(max_tokens=64, temperature=0.7, seed=1))
    dec.stats                                            # proposed, accepted, target calls

p and q are the distributions a token is actually drawn from, after every processing step of
the engine's sampler (penalties, temperature, top-k, top-p, min-p: serve/engine.py
``processed_logprobs``), each computed with the output so far, drafts accepted before it
included. Greedy decoding (temperature 0) makes p and q one-hot, the sampler accepts a draft
iff it is the target's argmax and the residual is the target's argmax: the output is the
target's greedy output, token for token (up to the target's rounding between a one-token and
a gamma+1-token forward, which the tests measure).

Proposers: ``DraftModelProposer`` (any lmspec model with the target's vocabulary, sampled with
the request's own processing), ``NgramProposer`` (prompt lookup: the latest earlier occurrence
of the context's last n tokens, n from ``n_max`` down to ``n_min``, proposes what followed it;
q is one-hot, a deterministic proposal). Uniforms are per request and step
(``default_rng([seed, start, stream, i])``, a step's start being the output length before
it), so a run is reproducible; its tokens differ from non-speculative sampling with the same
seed (another map from randomness to tokens, the same law).

Models with recurrent layers (lightning attention) are refused: their state has no rollback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmspec import backends
from lmspec.reference.rejection_sample import rejection_sample
from lmspec.serve.engine import SamplingParams, pick, processed_logprobs
from lmspec.serve.kv import has_recurrent_state
from lmspec.spec.model import ModelConfig

ACCEPT, RESAMPLE, DRAFT = 1, 2, 3  # the uniform streams of a request


def stream_uniform(seed: int, start: int, stream: int, i: int = 0) -> float:
    """Uniform ``i`` of one stream of the step that starts at output length ``start`` (each
    step starts at a new length, so no uniform is read twice)."""
    return float(np.random.default_rng([seed, start, stream, i]).random())


class Runner:
    """One sequence's model with a cache that follows the tokens it is asked about: ``logits``
    keeps the cached prefix that the new tokens share, drops the rest (the rollback of
    rejected drafts) and feeds what is new."""

    def __init__(self, config: ModelConfig, params: dict, *, backend: str = "reference",
                 dtype: str = "float64"):
        if has_recurrent_state(config):
            raise ValueError("config: speculative decoding needs caches that roll back; "
                             "lightning (recurrent) layers have none")
        self.config, self.dtype = config, dtype
        self.b = backends.load(backend)
        if not self.b.has("model"):
            raise ValueError(f"backend: {backend} implements no model")
        self.p = {n: self.b.asarray(np.asarray(a), dtype) for n, a in params.items()}
        self.fed: list[int] = []
        self.caches = None
        self.calls = 0

    def fork(self) -> Runner:
        """Another runner of the same model (the same parameter arrays), with its own cache."""
        other = object.__new__(Runner)
        other.config, other.dtype, other.b, other.p = self.config, self.dtype, self.b, self.p
        other.fed, other.caches, other.calls = [], None, 0
        return other

    def logits(self, tokens: Sequence[int], need: int) -> np.ndarray:
        """(need, V) float64: the logits after each of the last ``need`` tokens of the
        sequence ``tokens``."""
        tokens = [int(t) for t in tokens]
        if not 1 <= need <= len(tokens):
            raise ValueError(f"need: expected 1..{len(tokens)}, got {need}")
        keep = 0
        for a, b in zip(self.fed, tokens[:len(tokens) - need]):
            if a != b:
                break
            keep += 1
        if keep == 0:
            self.caches = None
        elif keep < len(self.fed):
            self.caches = [{n: a[:, :keep] for n, a in layer.items()} for layer in self.caches]
        new = tokens[keep:]
        tok = self.b.asarray(np.asarray([new], np.int64), None)
        pos = self.b.asarray(np.arange(keep, len(tokens))[None], None)
        lg, self.caches = self.b.fn("model")(self.p, tok, pos, caches=self.caches,
                                             config=self.config, use_cache=True)
        self.fed = tokens
        self.calls += 1
        return np.asarray(self.b.to_numpy(lg), np.float64)[0, -need:]


@dataclass
class Proposal:
    tokens: list[int]
    logq: np.ndarray  # (len(tokens), V) log-probabilities each draft was drawn from


class NgramProposer:
    """Prompt lookup (Saxena, 2023; vLLM's ``ngram``): match the last n tokens of the context
    (n = n_max, ..., n_min) at their latest earlier occurrence and propose up to gamma tokens
    that followed it; nothing when no n-gram recurs."""

    def __init__(self, n_max: int = 3, n_min: int = 1):
        if not 1 <= n_min <= n_max:
            raise ValueError(f"n_min, n_max: expected 1 <= n_min <= n_max, got {n_min}, {n_max}")
        self.n_max, self.n_min = n_max, n_min

    def propose(self, context: list[int], gamma: int, params: SamplingParams, prompt_len: int,
                vocab: int) -> Proposal:
        for n in range(min(self.n_max, len(context) - 1), self.n_min - 1, -1):
            tail = context[-n:]
            for start in range(len(context) - n - 1, -1, -1):
                if context[start:start + n] == tail:
                    toks = context[start + n:start + n + gamma]
                    logq = np.full((len(toks), vocab), -np.inf)
                    logq[np.arange(len(toks)), toks] = 0.0
                    return Proposal(list(toks), logq)
        return Proposal([], np.zeros((0, vocab)))


class DraftModelProposer:
    """A smaller model with the target's vocabulary, sampled gamma times with the request's own
    processing (so that q is the law each draft was drawn from)."""

    def __init__(self, runner: Runner):
        self.runner = runner

    def propose(self, context: list[int], gamma: int, params: SamplingParams, prompt_len: int,
                vocab: int, seed: int = 0) -> Proposal:
        if self.runner.config.vocab_size != vocab:
            raise ValueError(f"draft: vocabulary {self.runner.config.vocab_size} != the "
                             f"target's {vocab}")
        toks, rows = [], []
        prompt, out = context[:prompt_len], context[prompt_len:]
        for i in range(gamma):
            logits = self.runner.logits(context + toks, 1)[0]
            logq = processed_logprobs(logits, params, prompt, out + toks)
            u = stream_uniform(seed, len(out), DRAFT, i)
            toks.append(int(np.argmax(logq)) if params.temperature == 0 else pick(logq, u))
            rows.append(logq)
        return Proposal(toks, np.array(rows).reshape(len(toks), vocab))


class SpeculativeDecoder:
    """Draft, verify, accept, roll back; ``stats`` counts proposed and accepted drafts and
    target forwards."""

    def __init__(self, target: Runner, proposer, *, gamma: int = 4, eos_id: int | None = None):
        if not (isinstance(gamma, int) and gamma >= 1):
            raise ValueError(f"gamma: expected an integer >= 1, got {gamma!r}")
        self.target, self.proposer, self.gamma, self.eos_id = target, proposer, gamma, eos_id
        self.stats = {"proposed": 0, "accepted": 0, "steps": 0, "emitted": 0}

    def generate(self, prompt: Sequence[int], params: SamplingParams | None = None) -> list[int]:
        params = params or SamplingParams()
        prompt = [int(t) for t in prompt]
        vocab = self.target.config.vocab_size
        if not prompt or any(not 0 <= t < vocab for t in prompt):
            raise ValueError(f"prompt: expected at least one token id in [0, {vocab})")
        seed = params.seed if params.seed is not None else int(
            np.random.default_rng().integers(2**31))
        out: list[int] = []
        while len(out) < params.max_tokens:
            ctx = prompt + out
            room = params.max_tokens - len(out) - 1  # the step emits up to gamma + 1
            g = min(self.gamma, room)
            kw = {"seed": seed} if isinstance(self.proposer, DraftModelProposer) else {}
            prop = self.proposer.propose(ctx, g, params, len(prompt), vocab, **kw) if g else \
                Proposal([], np.zeros((0, vocab)))
            d = prop.tokens[:g]
            logits = self.target.logits(ctx + d, len(d) + 1)
            logp = self.target_logprobs(logits, params, prompt, out, d)
            n, last = verify(seed, len(out), d, prop.logq, logp)
            new = d[:n] + [last]
            self.stats["steps"] += 1
            self.stats["proposed"] += len(d)
            self.stats["accepted"] += n
            for t in new:
                out.append(t)
                if t in params.stop_token_ids or (t == self.eos_id and not params.ignore_eos):
                    self.stats["emitted"] += len(out)
                    return out
        self.stats["emitted"] += len(out)
        return out

    @staticmethod
    def target_logprobs(logits, params, prompt, out, drafts) -> np.ndarray:
        """(len(drafts) + 1, V): p at each draft position and the bonus position, each with
        the drafts before it in the output (they are accepted when it is read)."""
        return np.array([processed_logprobs(logits[i], params, prompt, out + drafts[:i])
                         for i in range(len(drafts) + 1)])

    @property
    def acceptance_rate(self) -> float:
        return self.stats["accepted"] / max(self.stats["proposed"], 1)


def verify(seed: int, start: int, drafts: list[int], logq: np.ndarray, logp: np.ndarray
           ) -> tuple[int, int]:
    """One request's step: (accepted drafts, the token drawn after them), by the spec's
    rejection sampler on q = exp(logq) (len(drafts), V) and p = exp(logp) (len(drafts) + 1,
    V), with the uniforms of the step that starts at output length ``start``."""
    g = len(drafts)
    u = np.array([[stream_uniform(seed, start, ACCEPT, i) for i in range(g)]])
    r = np.array([stream_uniform(seed, start, RESAMPLE)])
    n, toks = rejection_sample(np.array([drafts], np.int64).reshape(1, g),
                               np.exp(logq[:g])[None], np.exp(logp)[None], u, r)
    n = int(n[0])
    return n, int(toks[0, n])


def greedy_reference(target: Runner, prompt: Sequence[int], max_tokens: int,
                     params: SamplingParams | None = None) -> list[int]:
    """Target-only decoding, one token per forward (the baseline every proposer must equal
    under greedy sampling)."""
    params = params or SamplingParams(temperature=0, max_tokens=max_tokens)
    prompt, out = [int(t) for t in prompt], []
    for _ in range(max_tokens):
        logp = processed_logprobs(target.logits(prompt + out, 1)[0], params, prompt, out)
        out.append(int(np.argmax(logp)))
    return out
