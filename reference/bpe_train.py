"""Byte-level BPE training (spec/bpe_train.py), plainly: recount every pair before each merge."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import regex

from lmspec.reference.tokenizer import pretokenize
from lmspec.spec.bpe_train import BPEModel, check_args


def words_of(texts: Sequence[str], pattern: str, special_tokens: Sequence[str]) -> Counter:
    """Word (a piece's UTF-8 bytes) -> weight, over texts cut at the specials' occurrences."""
    cut = regex.compile("|".join(regex.escape(s) for s in special_tokens)) if special_tokens \
        else None
    words: Counter = Counter()
    for text in texts:
        for segment in (cut.split(text) if cut else [text]):
            try:
                words.update(p.encode("utf-8") for p in pretokenize(segment, pattern))
            except ValueError as e:
                raise ValueError(f"texts: {e}") from None
    return words


def merge_word(word: tuple[int, ...], pair: tuple[int, int], new: int) -> tuple[int, ...]:
    """Replace every occurrence of ``pair`` in ``word``, left to right, without overlap."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def pair_counts(words: dict[tuple[int, ...], int]) -> Counter:
    counts: Counter = Counter()
    for word, weight in words.items():
        for pair in zip(word, word[1:]):
            counts[pair] += weight
    return counts


def bpe_train(texts: Sequence[str], *, vocab_size: int, pattern: str,
              special_tokens: Sequence[str] = ()) -> BPEModel:
    check_args(texts, vocab_size=vocab_size, pattern=pattern, special_tokens=special_tokens)
    vocab = {i: bytes([i]) for i in range(256)}  # id -> bytes
    ids = {t: i for i, t in vocab.items()}  # bytes -> id
    words: dict[tuple[int, ...], int] = {
        tuple(w): n for w, n in words_of(texts, pattern, special_tokens).items()}
    merges = []
    while len(vocab) < vocab_size - len(special_tokens):
        counts = pair_counts(words)
        if not counts:
            break
        # highest count; on a tie the smallest (left id, right id)
        pair = min(counts, key=lambda p: (-counts[p], p))
        token = vocab[pair[0]] + vocab[pair[1]]
        # never already a token (the spec's step 3 says why): merge i gets id 256 + i
        assert token not in ids, f"merge {len(merges)} spells the existing token {token!r}"
        ids[token] = len(vocab)
        vocab[len(vocab)] = token
        merged: Counter = Counter()
        for word, weight in words.items():
            merged[merge_word(word, pair, ids[token])] += weight
        words = dict(merged)
        merges.append((vocab[pair[0]], vocab[pair[1]]))
    specials = {s: len(vocab) + k for k, s in enumerate(special_tokens)}
    return BPEModel(ranks=dict(ids), merges=merges, special_tokens=specials, pattern=pattern)
