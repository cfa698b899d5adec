"""The serving engine: any backend's ``model`` (spec/model.py) driven by the continuous-batching
scheduler (serve/scheduler.py) over the paged block manager (serve/blocks.py) and KV store
(serve/kv.py), with the spec's sampler (spec/sample.py) and streaming detokenization
(serve/detokenize.py).

    engine = Engine.from_checkpoint("runs/tiny/step-00000300")   # or Engine(config, params)
    rid = engine.add_request([1, 2, 3], SamplingParams(max_tokens=20, temperature=0))
    while engine.has_work():
        for out in engine.step():
            ...                                   # out.request_id, out.token, out.text, ...

Each step runs the scheduler's chunks one sequence at a time through the backend's model
with that sequence's own caches (gathered from its blocks; the chunk's new positions written
back), so a request's logits never depend on which other requests share the step: batch
composition, arrival order, chunk size, block size and preemptions change when a token is
computed, never its value (up to the backend's own floating-point differences between a
chunked and an unchunked prefill, which are measured, not assumed away, in the tests).

Sampling is reproducible per request: output token i of a request with seed s uses the
uniform ``default_rng([s, i]).random()``, so a preempted and recomputed request, or the same
request in another batch, draws the same token."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lmspec import backends
from lmspec.serve.blocks import BlockManager
from lmspec.serve.kv import PagedKV, has_recurrent_state
from lmspec.serve.scheduler import FINISHED, Scheduler
from lmspec.spec.model import ModelConfig


@dataclass(frozen=True)
class SamplingParams:
    """Per request. temperature 0 is greedy. ``stop``: strings that end the output (not
    included); ``stop_token_ids``: ids that end it (included in the ids, not in the text);
    ``ignore_eos``: the engine's EOS id does not stop it. ``seed``: None draws one (and
    reports it)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.max_tokens, int) and self.max_tokens >= 1):
            raise ValueError(f"max_tokens: expected an integer >= 1, got {self.max_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature: expected >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k: expected an integer >= 0 (0: off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: expected in (0, 1], got {self.top_p!r}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p: expected in [0, 1], got {self.min_p!r}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty: expected > 0, got "
                             f"{self.repetition_penalty!r}")
        for n in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, n) <= 2:
                raise ValueError(f"{n}: expected in [-2, 2], got {getattr(self, n)!r}")
        if self.logprobs is not None and not (isinstance(self.logprobs, int)
                                              and 0 <= self.logprobs <= 20):
            raise ValueError(f"logprobs: expected an integer in [0, 20], got {self.logprobs!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop: expected non-empty strings")


@dataclass
class Output:
    """What one step produced for one request: its new token (and its logprob), the text
    that became safe to show, and whether it finished (and why: "stop" or "length", or
    "abort")."""

    request_id: Hashable
    token: int | None
    text: str
    finished: bool
    finish_reason: str | None = None
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None


@dataclass
class _Req:
    params: SamplingParams
    seed: int
    detok: object | None
    prompt_len: int
    text: list[str] = field(default_factory=list)
    t_arrival: float = 0.0
    t_first: float | None = None
    logq: np.ndarray | None = None  # the drafts' proposal law (speculative decoding)


class Engine:
    def __init__(self, config: ModelConfig, params: dict, *, backend: str = "torch_triton",
                 dtype: str = "float32", block_size: int = 16, num_blocks: int | None = None,
                 max_num_seqs: int = 16, max_tokens_per_step: int = 256,
                 max_model_len: int | None = None, prefix_caching: bool = True,
                 tokenizer=None, eos_id: int | None = None, batched: bool = True,
                 proposer=None, gamma: int = 4):
        self.config, self.dtype = config, dtype
        self.b = backends.load(backend)
        if not self.b.has("model"):
            raise ValueError(f"backend: {backend} implements no model")
        self.p = {n: self.b.asarray(np.asarray(a), dtype) for n, a in params.items()}
        self.max_model_len = max_model_len or 2048
        if num_blocks is None:  # enough for max_num_seqs sequences of max_model_len
            num_blocks = max_num_seqs * -(-self.max_model_len // block_size)
        recurrent = has_recurrent_state(config)
        if proposer is not None:
            if recurrent:
                raise ValueError("proposer: speculative decoding needs caches that roll back; "
                                 "lightning (recurrent) layers have none")
            if not (isinstance(gamma, int) and gamma >= 1):
                raise ValueError(f"gamma: expected an integer >= 1, got {gamma!r}")
        self.proposer, self.gamma = proposer, gamma
        self._draft_runners: dict = {}
        self.blocks = BlockManager(num_blocks, block_size,
                                   prefix_caching=prefix_caching and not recurrent)
        # batched steps (every chunk of a step in one forward) where the backend has them
        self.batched = batched and self.b.has("model_packed") and config.mla is None \
            and not recurrent
        if self.batched:
            from lmspec.serve.kv import TorchPagedKV

            e = self.p["embed"]
            self.kv = TorchPagedKV(config, num_blocks, block_size, e.dtype, e.device)
        else:
            self.kv = PagedKV(config, num_blocks, block_size, _host_dtype(dtype))
        self.scheduler = Scheduler(self.blocks, max_num_seqs=max_num_seqs,
                                   max_tokens=max_tokens_per_step)
        self.tokenizer, self.eos_id = tokenizer, eos_id
        self.reqs: dict[Hashable, _Req] = {}
        self._ids = itertools.count()
        self.stats = {"steps": 0, "prefill_tokens": 0, "decode_tokens": 0,
                      "cached_tokens": 0, "preemptions": 0, "drafts_proposed": 0,
                      "drafts_accepted": 0}

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_path(cls, path: str | Path, **kw) -> Engine:
        """An lmspec checkpoint step folder (or a run folder: its latest step; its
        vocab.json gives the tokenizer) or an HF checkpoint directory."""
        from lmspec.spec import _checkpoint as hf
        from lmspec.train import checkpoint as ckpt

        path = Path(path)
        if (path / "config.json").exists():
            config, params = hf.load_hf_dir(path)
            return cls(config, params, **kw)
        run = path if ckpt.latest(path) is not None else path.parent
        step = ckpt.latest(path) or path
        c = ckpt.load(step)
        config = ModelConfig.from_dict(c.model_config)
        if "tokenizer" not in kw and (run / "vocab.json").exists():
            from lmspec.train.data import Vocabulary

            vocab = Vocabulary.from_json(json.loads((run / "vocab.json").read_text()))
            kw.setdefault("tokenizer", vocab.tokenizer())
            kw.setdefault("eos_id", vocab.eos_id)
        return cls(config, c.params, **kw)

    # ------------------------------------------------------------------ requests

    def add_request(self, prompt: Sequence[int], params: SamplingParams | None = None,
                    request_id: Hashable | None = None) -> Hashable:
        params = params or SamplingParams()
        rid = next(self._ids) if request_id is None else request_id
        if rid in self.reqs:
            raise ValueError(f"request_id: {rid!r} is in use")
        prompt = self.validate(prompt, params)
        seed = params.seed if params.seed is not None else int(
            np.random.default_rng().integers(2**31))
        self.scheduler.add(rid, prompt, params.max_tokens)
        detok = None if self.tokenizer is None else _Detok(self.tokenizer, params.stop)
        self.reqs[rid] = _Req(replace(params, seed=seed), seed, detok, len(prompt),
                              t_arrival=time.perf_counter())
        return rid

    def validate(self, prompt: Sequence[int], params: SamplingParams) -> list[int]:
        """The prompt as ints, or a ValueError naming what is wrong (nothing is added)."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("prompt: expected at least one token")
        bad = [t for t in prompt if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"prompt: token ids must lie in [0, {self.config.vocab_size}), "
                             f"got {bad[:3]}")
        if len(prompt) + params.max_tokens > self.max_model_len:
            raise ValueError(f"prompt + max_tokens: {len(prompt)} + {params.max_tokens} > "
                             f"max_model_len {self.max_model_len}")
        return prompt

    def abort(self, request_id: Hashable) -> None:
        """Frees what the request holds at once; unknown or finished ids are ignored."""
        if request_id in self.reqs:
            self.scheduler.abort(request_id)
            self.kv.drop(request_id)
            self._draft_runners.pop(request_id, None)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # ------------------------------------------------------------------ one step

    def _propose(self) -> None:
        """Drafts for every running sequence that decodes next (speculative decoding)."""
        from lmspec.serve import speculative as SP

        for rid in self.scheduler.running:
            s, r = self.scheduler.seqs[rid], self.reqs[rid]
            s.drafts, r.logq = [], None
            room = min(self.gamma, s.max_tokens - len(s.output) - 1,
                       self.max_model_len - s.num_tokens - 1)
            if s.num_computed != s.num_tokens - 1 or room < 1:
                continue
            prop = self.proposer
            kw = {}
            if isinstance(prop, SP.DraftModelProposer):
                if rid not in self._draft_runners:
                    self._draft_runners[rid] = SP.DraftModelProposer(prop.runner.fork())
                prop, kw = self._draft_runners[rid], {"seed": r.seed}
            p = prop.propose(s.tokens, room, r.params, len(s.prompt), self.config.vocab_size,
                             **kw)
            s.drafts, r.logq = list(p.tokens[:room]), p.logq[:room]

    def step(self) -> list[Output]:
        if self.proposer is not None:
            self._propose()
        d = self.scheduler.schedule()
        self.stats["steps"] += 1
        self.stats["preemptions"] += len(d.preempted)
        self.stats["cached_tokens"] += sum(d.cached_tokens.values())
        for seq_id in d.preempted:
            self.kv.drop(seq_id)
        for src, dst in d.copies:
            self.kv.copy(src, dst)
        if self.batched:
            return self._sample(self._batched_forward(d.chunks))
        last_logits = {}
        for c in d.chunks:
            table = self.blocks.block_table(c.seq_id)
            caches = self.kv.gather(c.seq_id, table, c.start)
            if caches is not None:
                caches = [{n: self.b.asarray(a, self.dtype) for n, a in layer.items()}
                          for layer in caches]
            tok = self.b.asarray(np.asarray([c.tokens], np.int64), None)
            logits, new = self.b.fn("model")(self.p, tok, caches=caches, config=self.config,
                                             use_cache=True)
            self.kv.write(c.seq_id, table, c.start,
                          [{n: self.b.to_numpy(a) for n, a in layer.items()} for layer in new])
            key = "prefill_tokens" if c.is_prefill else "decode_tokens"
            self.stats[key] += len(c.tokens)
            if c.samples:
                last_logits[c.seq_id] = np.asarray(self.b.to_numpy(logits),
                                                   np.float64)[0, -1 - c.num_drafts:]
        return self._sample(last_logits)

    def _batched_forward(self, chunks) -> dict[Hashable, np.ndarray]:
        """Every chunk of the step in one forward (model_packed); the logits of the chunks
        that sample."""
        if not chunks:
            return {}
        self.kv.plan([(self.blocks.block_table(c.seq_id), c.start, len(c.tokens))
                      for c in chunks])
        tokens = np.concatenate([np.asarray(c.tokens, np.int64) for c in chunks])
        positions = np.concatenate([np.arange(c.start, c.start + len(c.tokens))
                                    for c in chunks])
        rows, ids, end = [], [], 0
        for c in chunks:
            end += len(c.tokens)
            key = "prefill_tokens" if c.is_prefill else "decode_tokens"
            self.stats[key] += len(c.tokens)
            if c.samples:
                rows.extend(range(end - 1 - c.num_drafts, end))
                ids.append((c.seq_id, c.num_drafts + 1))
        layers = [self.kv.layer(i) for i in range(self.config.n_layers)]
        logits = self.b.fn("model_packed")(self.p, self.b.asarray(tokens, None),
                                           self.b.asarray(positions, None), layers,
                                           config=self.config, logits_at=rows)
        out = np.asarray(self.b.to_numpy(logits), np.float64)
        res, j = {}, 0
        for sid, m in ids:
            res[sid], j = out[j:j + m], j + m
        return res

    def _verify(self, rid, logits: np.ndarray) -> list[tuple[int, float, dict | None]]:
        """Speculative decoding: the accepted drafts and the token after them, each with its
        logprob (and top logprobs) under the target's processed distribution."""
        from lmspec.serve import speculative as SP

        r, s = self.reqs[rid], self.scheduler.seqs[rid]
        d = s.drafts[:s.in_flight]
        logp = SP.SpeculativeDecoder.target_logprobs(logits, r.params, s.prompt, s.output, d)
        n, last = SP.verify(r.seed, len(s.output), d, r.logq, logp)
        self.stats["drafts_proposed"] += len(d)
        self.stats["drafts_accepted"] += n
        return [(t, float(logp[i, t]), top_logprobs(logp[i], r.params.logprobs))
                for i, t in enumerate(d[:n] + [last])]

    def _sample(self, rows: dict[Hashable, np.ndarray]) -> list[Output]:
        outs, sampled, stop = [], {}, {}
        for rid, logits in rows.items():
            r, s = self.reqs[rid], self.scheduler.seqs[rid]
            if s.in_flight:
                picks = self._verify(rid, logits)
            else:
                picks = [sample_one(logits[-1], r.params, s.prompt, s.output,
                                    uniform(r.seed, len(s.output)))]
            if r.t_first is None:
                r.t_first = time.perf_counter()
            kept = []
            for tok, lp, top in picks:
                kept.append(tok)
                text, reason = "", None
                if tok in r.params.stop_token_ids or (tok == self.eos_id and not
                                                      r.params.ignore_eos):
                    reason = "stop"
                elif r.detok is not None:
                    text, hit = r.detok.push(tok)
                    reason = "stop" if hit else None
                outs.append(Output(rid, tok, text, False, None, lp, top))
                if reason:
                    stop[rid] = reason
                    break
            sampled[rid] = kept
        done = {s.seq_id: s for s in self.scheduler.update(sampled, stop)}
        last = {o.request_id: o for o in outs}
        for o in outs:
            s = done.get(o.request_id)
            if s is not None and o is last[o.request_id]:
                o.finished, o.finish_reason = True, s.finish_reason
                self._draft_runners.pop(o.request_id, None)
                r = self.reqs[o.request_id]
                if r.detok is not None and s.finish_reason == "length":
                    o.text += r.detok.flush()
                self.kv.drop(o.request_id)
        for o in outs:
            self.reqs[o.request_id].text.append(o.text)
        return outs

    # ------------------------------------------------------------------ conveniences

    def generate(self, prompts: Sequence[Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None
                 ) -> list[list[int]]:
        """Every prompt to completion; the output ids of each, in order."""
        ps = params if isinstance(params, list | tuple) else [params] * len(prompts)
        ids = [self.add_request(p, q) for p, q in zip(prompts, ps, strict=True)]
        while self.has_work():
            self.step()
        return [list(self.scheduler.seqs[i].output) for i in ids]

    def text(self, request_id: Hashable) -> str:
        return "".join(self.reqs[request_id].text)

    def finished(self, request_id: Hashable) -> bool:
        return self.scheduler.seqs[request_id].status == FINISHED

    def release(self, request_id: Hashable) -> None:
        """Forget a finished request's bookkeeping (a server does it after answering)."""
        s = self.scheduler.seqs.get(request_id)
        if s is not None and s.status == FINISHED:
            del self.scheduler.seqs[request_id]
            self.reqs.pop(request_id, None)


class _Detok:
    """Streaming text of a token stream: bytes are emitted up to the last complete UTF-8
    character (a character split across tokens is never shown half; bytes that can never
    complete one become U+FFFD, as ``bytes.decode(errors="replace")``), and text that could
    still be the start of a stop string is held back; ``push`` returns (the text now safe,
    whether a stop string was found: the text before it is the last returned)."""

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tok, self.stop = tokenizer, tuple(stop)
        self.pending = b""  # bytes not yet decoded (an incomplete character)
        self.held = ""  # decoded text held back for a possible stop string

    def push(self, token: int) -> tuple[str, bool]:
        self.pending += self.tok.decode_bytes([token])
        text, self.pending = _complete_utf8(self.pending)
        self.held += text
        for s in self.stop:
            i = self.held.find(s)
            if i >= 0:
                out, self.held = self.held[:i], ""
                return out, True
        keep = max((k for s in self.stop for k in range(1, len(s))
                    if self.held.endswith(s[:k])), default=0)
        out = self.held[:len(self.held) - keep]
        self.held = self.held[len(self.held) - keep:]
        return out, False

    def flush(self) -> str:
        out = self.held + self.pending.decode("utf-8", errors="replace")
        self.held, self.pending = "", b""
        return out


def _complete_utf8(data: bytes) -> tuple[str, bytes]:
    """(the decoded text of every complete character, the bytes of a trailing incomplete
    one): at most 3 trailing bytes wait, and only when they can still start a character."""
    for cut in range(min(3, len(data)), 0, -1):
        tail = data[-cut:]
        lead = tail[0]
        need = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 \
            if lead >> 3 == 0b11110 else 0
        if need > cut and all(b >> 6 == 0b10 for b in tail[1:]):
            return data[:-cut].decode("utf-8", errors="replace"), tail
    return data.decode("utf-8", errors="replace"), b""


def _host_dtype(dtype: str) -> np.dtype:
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)


def uniform(seed: int, index: int) -> float:
    """The uniform in [0, 1) that picks output token ``index`` of a request seeded ``seed``."""
    return float(np.random.default_rng([seed, index]).random())


def processed_logprobs(logits, params: SamplingParams, prompt, output) -> np.ndarray:
    """(V,) float64 log-probabilities of the distribution a token is drawn from, after
    every processing step of ``sample_one`` (dropped ids at -inf; greedy: 0 at the argmax,
    ties to the lowest id, -inf elsewhere). Speculative decoding's p and q are these."""
    z = np.array(logits, np.float64)
    seen = np.zeros(z.shape, bool)
    seen[list(prompt) + list(output)] = True
    if params.repetition_penalty != 1.0:
        r = params.repetition_penalty
        z = np.where(seen, np.where(z > 0, z / r, z * r), z)
    if output and (params.presence_penalty or params.frequency_penalty):
        counts = np.bincount(np.asarray(output, np.int64), minlength=z.size)[:z.size]
        z = z - params.presence_penalty * (counts > 0) - params.frequency_penalty * counts
    if params.temperature == 0:
        keep = np.zeros(z.shape, bool)
        keep[int(np.argmax(z))] = True
    else:
        z = z / params.temperature
        keep = np.ones(z.shape, bool)
        order = np.lexsort((np.arange(z.size), -z))  # descending logit, then ascending id
        if params.top_k:
            keep[order[params.top_k:]] = False
        p = np.exp(z - z.max())
        p = np.where(keep, p, 0.0)
        p /= p.sum()
        if params.top_p < 1.0:
            mass = np.cumsum(p[order])
            cut = int(np.searchsorted(mass, params.top_p, side="left")) + 1
            keep[order[cut:]] = False
        if params.min_p > 0:
            keep &= p >= params.min_p * p.max()
    zk = np.where(keep, z, -np.inf)
    return zk - zk.max() - np.log(np.sum(np.exp(zk - zk.max())))


def pick(logp: np.ndarray, u: float) -> int:
    """The token ``min{j : u < cdf_j}`` over ids in ascending order (never a dropped id)."""
    cdf = np.cumsum(np.exp(logp))
    tok = int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), logp.size - 1))
    while not np.isfinite(logp[tok]):  # a dropped id has zero mass: step to the next kept one
        tok += 1
    return tok


def sample_one(logits, params: SamplingParams, prompt, output, u: float):
    """(token, its logprob under the final distribution, top logprobs or None) for one row
    of float64 logits, in the order: repetition penalty (HF/CTRL: positive logits of seen
    tokens divided, negative multiplied; prompt and output), presence and frequency
    penalties (OpenAI: minus presence for every output token seen, minus frequency times
    its count), temperature (0: greedy, ties to the lowest id), top-k, top-p (the smallest
    set, by descending probability and ascending id, whose mass reaches p: the token that
    crosses p is kept), min-p (tokens below min_p times the largest probability dropped),
    then the token ``min{j : u < cdf_j}`` over ids in ascending order."""
    logp = processed_logprobs(logits, params, prompt, output)
    tok = int(np.argmax(logp)) if params.temperature == 0 else pick(logp, u)
    return tok, float(logp[tok]), top_logprobs(logp, params.logprobs)


def top_logprobs(logp: np.ndarray, k: int | None) -> dict[int, float] | None:
    """The k most likely ids (ties to the lowest id) and their logprobs; None for k 0/None."""
    if not k:
        return None
    best = np.lexsort((np.arange(logp.size), -logp))[:k]
    return {int(t): float(logp[t]) for t in best if np.isfinite(logp[t])}
