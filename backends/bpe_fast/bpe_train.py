"""bpe_fast trainer: incremental pair counts, an index of the words each pair occurs in, and a
lazy-deletion heap; exactly the reference's merges (spec/bpe_train.py)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from heapq import heapify, heappop, heappush

import regex

from lmspec.backends.bpe_fast._pretokenize import matches
from lmspec.spec.bpe_train import BPEModel, check_args


def _words(texts: Sequence[str], pattern: str, special_tokens: Sequence[str]) -> Counter:
    pieces: Counter = Counter()
    findall = matches(pattern)  # whole matches, whatever groups the pattern has
    cut = regex.compile("|".join(regex.escape(s) for s in special_tokens)) if special_tokens \
        else None
    for text in texts:
        for segment in (cut.split(text) if cut else (text,)):
            found = findall(segment)
            if sum(map(len, found)) != len(segment):
                from lmspec.reference.tokenizer import pretokenize

                try:
                    pretokenize(segment, pattern)
                except ValueError as e:
                    raise ValueError(f"texts: {e}") from None
            pieces.update(found)
    words: Counter = Counter()
    for piece, n in pieces.items():
        if piece:
            words[piece.encode("utf-8")] += n
    return words


def _merge(word: list[int], a: int, b: int, new: int) -> list[int]:
    out, i, n = [], 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train(texts: Sequence[str], *, vocab_size: int, pattern: str,
          special_tokens: Sequence[str] = (),
          progress: Callable[[int, int], None] | None = None) -> BPEModel:
    """``bpe_train`` with ``progress(done, total)`` called as tokens are added (done merged
    tokens of at most total = vocab_size - 256 - len(special_tokens))."""
    check_args(texts, vocab_size=vocab_size, pattern=pattern, special_tokens=special_tokens)
    counted = _words(texts, pattern, special_tokens)
    words = [list(w) for w in counted]
    weights = list(counted.values())
    counts: defaultdict[tuple[int, int], int] = defaultdict(int)
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for k, w in enumerate(words):
        for pair in zip(w, w[1:]):
            counts[pair] += weights[k]
            where[pair].add(k)
    heap = [(-c, p) for p, c in counts.items()]
    heapify(heap)
    vocab = [bytes([i]) for i in range(256)]
    ids = {t: i for i, t in enumerate(vocab)}
    merges: list[tuple[bytes, bytes]] = []
    total = vocab_size - 256 - len(special_tokens)
    step = max(total // 200, 1)
    while len(vocab) < vocab_size - len(special_tokens) and heap:
        neg, pair = heappop(heap)
        current = counts.get(pair, 0)
        if -neg != current:  # stale: counts of an existing pair only fall
            if current > 0:
                heappush(heap, (-current, pair))
            continue
        if current <= 0:
            break
        a, b = pair
        token = vocab[a] + vocab[b]
        new = ids.get(token)
        if new is None:
            new = ids[token] = len(vocab)
            vocab.append(token)
        merges.append((vocab[a], vocab[b]))
        grown: set[tuple[int, int]] = set()
        for k in where.pop(pair):
            w = words[k]
            merged = _merge(w, a, b, new)
            if len(merged) == len(w):
                continue  # stale index entry
            weight = weights[k]
            for p in zip(w, w[1:]):
                counts[p] -= weight
            for p in zip(merged, merged[1:]):
                counts[p] += weight
                where[p].add(k)
                grown.add(p)
            words[k] = merged
        counts.pop(pair, None)
        for p in grown:  # the new pairs
            if counts[p] > 0:
                heappush(heap, (-counts[p], p))
        if progress is not None and (len(vocab) - 256) % step == 0:
            progress(len(vocab) - 256, total)
    if progress is not None:
        progress(len(vocab) - 256, total)
    specials = {s: len(vocab) + k for k, s in enumerate(special_tokens)}
    return BPEModel(ranks=dict(ids), merges=merges, special_tokens=specials, pattern=pattern)


def bpe_train(texts: Sequence[str], *, vocab_size: int, pattern: str,
              special_tokens: Sequence[str] = ()) -> BPEModel:
    return train(texts, vocab_size=vocab_size, pattern=pattern, special_tokens=special_tokens)
