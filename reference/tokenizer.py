"""Byte-level BPE encoding and decoding with tiktoken's semantics (spec/tokenizer.py): regex
pre-tokenization, lowest-rank-leftmost merging per piece, special tokens, streaming decode."""

from __future__ import annotations

import codecs
import numbers
from collections.abc import Mapping, Sequence
from functools import lru_cache
from heapq import heappop, heappush

import regex

from lmspec.reference._bpe_formats import (  # noqa: F401  (re-exported)
    load_gpt2,
    load_hf_json,
    load_preset,
    load_tiktoken,
    merges_of,
    save_gpt2,
    save_hf_json,
    save_tiktoken,
)
from lmspec.spec.tokenizer import SpecialSet, check_args, check_encode_args, check_ids


@lru_cache(maxsize=64)
def _compiled(pattern: str) -> regex.Pattern:
    return regex.compile(pattern)


def pretokenize(text: str, pattern: str) -> list[str]:
    """The non-empty matches of ``pattern``, left to right; they must tile ``text``."""
    pieces, pos = [], 0
    for m in _compiled(pattern).finditer(text):
        if m.start() != pos:
            raise ValueError(f"text: the pattern leaves {text[pos:m.start()]!r} at position "
                             f"{pos} unmatched")
        if m.end() > m.start():
            pieces.append(m.group())
        pos = m.end()
    if pos != len(text):
        raise ValueError(f"text: the pattern leaves {text[pos:pos + 20]!r} at position {pos} "
                         "unmatched")
    return pieces


def merge_parts(piece: bytes, ranks: Mapping[bytes, int],
                max_rank: int | None = None) -> list[bytes]:
    """BPE of one piece's bytes: from single bytes, join the adjacent pair whose concatenation
    has the lowest rank (leftmost on equal rank) until none is a token (of rank < max_rank).

    Parts form a linked list over start offsets; candidate pairs wait in a heap keyed
    (rank, start), so a pop is the lowest rank, leftmost. An entry is stale once its left part
    is gone or its right part has changed (checked by the pair's end offset): at most
    n - 1 + 2 * merges pushes, so the work is O(n log n), not the O(n^2) of rescanning.
    """
    n = len(piece)
    if n <= 1:
        return [piece] if n else []
    limit = float("inf") if max_rank is None else max_rank
    nxt = list(range(1, n + 1))  # start of the next part (n: none)
    prv = list(range(-1, n - 1))  # start of the previous part (-1: none)
    alive = [True] * n
    heap: list[tuple[int, int, int]] = []

    def push(i: int) -> None:  # the pair (part at i, the part after it)
        j = nxt[i]
        if j < n:
            r = ranks.get(piece[i:nxt[j]])
            if r is not None and r < limit:
                heappush(heap, (r, i, nxt[j]))

    for i in range(n - 1):
        push(i)
    while heap:
        _, i, end = heappop(heap)
        if not alive[i] or nxt[i] >= n or nxt[nxt[i]] != end:
            continue  # stale: this pair no longer exists
        alive[nxt[i]] = False
        nxt[i] = end
        if end < n:
            prv[end] = i
        push(i)
        if prv[i] >= 0:
            push(prv[i])
    starts = [i for i in range(n) if alive[i]]
    return [piece[s:nxt[s]] for s in starts]


def bpe_encode_piece(piece: bytes, ranks: Mapping[bytes, int]) -> list[int]:
    """One piece's ids: the piece itself if it is a token (tiktoken's shortcut), else BPE."""
    rank = ranks.get(piece)
    if rank is not None:
        return [rank]
    return [ranks[p] for p in merge_parts(piece, ranks)]


def _valid_unicode(text: str) -> str:
    """tiktoken's fix for text that is not valid Unicode: surrogate pairs joined, lone
    surrogates -> U+FFFD (identity on valid text)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class Tokenizer:
    """The reference encoder/decoder (spec.tokenizer.Tokenizer)."""

    def __init__(self, ranks: Mapping[bytes, int], pattern: str,
                 special_tokens: Mapping[str, int] | None = None):
        self.ranks = dict(ranks)
        self.pattern = pattern
        self.special_tokens = dict(special_tokens or {})
        self._decoder = {i: t for t, i in self.ranks.items()}
        self._decoder.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})
        self.n_vocab = max(self._decoder) + 1

    def encode_ordinary(self, text: str) -> list[int]:
        check_encode_args(text, {})
        return self._ordinary(_valid_unicode(text))

    def _ordinary(self, text: str) -> list[int]:
        return [i for piece in pretokenize(text, self.pattern)
                for i in bpe_encode_piece(piece.encode("utf-8"), self.ranks)]

    def encode(self, text: str, *, allowed_special: SpecialSet = frozenset(),
               disallowed_special: SpecialSet = "all") -> list[int]:
        allowed, disallowed = check_encode_args(text, self.special_tokens, allowed_special,
                                                disallowed_special)
        hits = [(text.find(s), s) for s in disallowed if s in text]
        if hits:
            raise ValueError(f"text: contains the disallowed special token {min(hits)[1]!r}; "
                             "pass it in allowed_special to encode it as a special token, or "
                             "remove it from disallowed_special to encode it as text")
        text = _valid_unicode(text)
        if not allowed:
            return self._ordinary(text)
        # leftmost occurrence first; at one position the longest special
        alternation = "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True))
        out, pos = [], 0
        for m in regex.finditer(alternation, text):
            out += self._ordinary(text[pos:m.start()])
            out.append(self.special_tokens[m.group()])
            pos = m.end()
        return out + self._ordinary(text[pos:])

    def encode_batch(self, texts: Sequence[str], *, allowed_special: SpecialSet = frozenset(),
                     disallowed_special: SpecialSet = "all") -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError("texts: expected a sequence of str, got one str")
        return [self.encode(t, allowed_special=allowed_special,
                            disallowed_special=disallowed_special) for t in texts]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        check_ids(ids)
        out = []
        for k, i in enumerate(ids):
            tok = self._decoder.get(i) if isinstance(i, numbers.Integral) else None
            if tok is None:
                raise ValueError(f"ids: {i!r} at position {k} is not a token id "
                                 f"(n_vocab {self.n_vocab})")
            out.append(tok)
        return b"".join(out)

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        return self.decode_bytes(ids).decode("utf-8", errors=errors)


def tokenizer(ranks: Mapping[bytes, int], *, pattern: str,
              special_tokens: Mapping[str, int] | None = None) -> Tokenizer:
    check_args(ranks, pattern=pattern, special_tokens=special_tokens)
    return Tokenizer(ranks, pattern, special_tokens)


class StreamDecoder:
    """Decode ids as they arrive: ``feed`` returns the text of every complete UTF-8 sequence
    and holds back an incomplete tail (at most 3 bytes); ``flush`` ends the stream (a held
    tail becomes U+FFFD with errors="replace"). feeds + flush == decode of all the ids."""

    def __init__(self, tok: Tokenizer, errors: str = "replace"):
        self._tok = tok
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors)

    def feed(self, ids: Sequence[int]) -> str:
        return self._utf8.decode(self._tok.decode_bytes(ids))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)
