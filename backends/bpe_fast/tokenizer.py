"""bpe_fast encoder (spec/tokenizer.py): pre-tokenization of the presets' ASCII text by the
compiled core's scanners, or stdlib ``re`` without it (_pretokenize.py), then per piece: the
token it is, or a merge, cached. That per-piece work runs in the compiled core (_core.c) when
it was built, else here in Python (a
str -> id map of the vocabulary; a rescan merge for short pieces, a heap for long ones);
``FastTokenizer(..., core="python")`` or $LMSPEC_BPE_FAST_CORE=python asks for the Python
path."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from heapq import heappop, heappush
from typing import Literal

import regex

from lmspec.backends.bpe_fast._pretokenize import matches, splitter
from lmspec.spec.tokenizer import SpecialSet, check_args, check_encode_args, check_ids

_CACHE_MAX = 1 << 18  # pieces; real text repeats them heavily
# below this many bytes, rescanning the pairs beats a heap: random-letter pieces, cl100k,
# 2026-11-28 (busy machine): even at 24 bytes (50 vs 56 us), heap ahead from 32 (54 vs 70 us)
_SHORT = 24
_INF = 1 << 62  # _merge_short's "no pair": above every rank of the vocabularies it gets

try:
    from lmspec.backends.bpe_fast import _core
except ImportError:  # built without a C compiler (setup.py): the Python path serves
    _core = None


def _default_core() -> Literal["c", "python"]:
    """$LMSPEC_BPE_FAST_CORE ("c" or "python") if set, else "c" where it was built."""
    asked = os.environ.get("LMSPEC_BPE_FAST_CORE", "")
    if asked not in ("", "c", "python"):
        raise ValueError(f"LMSPEC_BPE_FAST_CORE: expected 'c' or 'python', got {asked!r}")
    return asked or ("python" if _core is None else "c")


def _merge_short(piece: bytes, ranks: Mapping[bytes, int]) -> list[int]:
    """tiktoken's own loop: rescan for the lowest-ranked pair, leftmost on ties (ranks < _INF)."""
    get = ranks.get
    bounds = list(range(len(piece) + 1))
    pair = [get(piece[i:i + 2], _INF) for i in range(len(piece) - 1)]
    while pair:
        best = min(pair)
        if best == _INF:
            break
        i = pair.index(best)
        del bounds[i + 1]
        del pair[i]
        if i < len(pair):
            pair[i] = get(piece[bounds[i]:bounds[i + 2]], _INF)
        if i > 0:
            pair[i - 1] = get(piece[bounds[i - 1]:bounds[i + 1]], _INF)
    return [ranks[piece[a:b]] for a, b in zip(bounds, bounds[1:])]


def _merge_long(piece: bytes, ranks: Mapping[bytes, int]) -> list[int]:
    """Heap of (rank, start, end) candidate pairs over a linked list of parts; lazy deletion."""
    n, get = len(piece), ranks.get
    nxt = list(range(1, n + 1))
    prv = list(range(-1, n - 1))
    heap = []
    for i in range(n - 1):
        r = get(piece[i:i + 2])
        if r is not None:
            heap.append((r, i, i + 2))
    heap.sort()  # a sorted list is a heap
    while heap:
        _, i, end = heappop(heap)
        j = nxt[i]
        if j >= n or nxt[j] != end or prv[j] != i:
            continue
        nxt[i] = end
        prv[j] = -2  # j is gone
        if end < n:
            prv[end] = i
            r = get(piece[i:nxt[end]])
            if r is not None:
                heappush(heap, (r, i, nxt[end]))
        p = prv[i]
        if p >= 0:
            r = get(piece[p:end])
            if r is not None:
                heappush(heap, (r, p, end))
    out, i = [], 0
    while i < n:
        out.append(ranks[piece[i:nxt[i]]])
        i = nxt[i]
    return out


class FastTokenizer:
    def __init__(self, ranks: Mapping[bytes, int], pattern: str,
                 special_tokens: Mapping[str, int] | None = None,
                 core: Literal["c", "python"] | None = None):
        self._ranks = dict(ranks)
        self._regex = regex.compile(pattern)
        self._matches = matches(pattern)
        self.special_tokens = dict(special_tokens or {})
        self._decoder = {i: t for t, i in self._ranks.items()}
        self._decoder.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})
        self.n_vocab = max(self._decoder) + 1
        self._max_rank = max(self._ranks.values())
        if core not in (None, "c", "python"):
            raise ValueError(f"core: expected 'c', 'python' or None, got {core!r}")
        asked = core or os.environ.get("LMSPEC_BPE_FAST_CORE")  # asked for, or the default
        core = core or _default_core()
        if core == "c" and _core is None:
            raise ValueError("core: 'c' asked for, but lmspec was installed without its "
                             "compiled core (no C compiler at install time)")
        self._encoder = None  # the compiled core: its own byte table and cache
        if core == "c":
            try:
                self._encoder = _core.Encoder(self._ranks, _CACHE_MAX)
            except OverflowError:  # a rank past 2**63: the Python path has no such limit
                if asked == "c":  # asked for by name: say so rather than fall back
                    raise
        # the Python path: whole pieces that are one token, by their text (a piece's UTF-8 is
        # a token iff its text is the token's decoded text), and the pieces that took merging
        self._single: dict[str, int] = {}
        self._cache: dict[str, list[int]] = {}
        if self._encoder is None:
            for token, rank in self._ranks.items():
                try:
                    self._single[token.decode("utf-8")] = rank
                except UnicodeDecodeError:
                    pass
        self.core = "python" if self._encoder is None else "c"
        self._split = splitter(pattern, None if self._encoder is None else _core)

    def _merged(self, piece: str) -> list[int]:
        ids = self._cache.get(piece)
        if ids is None:
            b = piece.encode("utf-8")
            short = len(b) < _SHORT and self._max_rank < _INF
            ids = _merge_short(b, self._ranks) if short else _merge_long(b, self._ranks)
            if len(self._cache) < _CACHE_MAX:
                self._cache[piece] = ids
        return ids

    def _ordinary(self, text: str) -> list[int]:
        pieces = self._split(text)
        if self._encoder is not None:
            ids = self._encoder.encode(pieces, len(text))  # None: the pieces do not tile
            if ids is not None:
                return ids
        elif sum(map(len, pieces)) == len(text):  # non-overlapping matches tile iff they cover
            return self._from_pieces(pieces)
        pieces = self._matches(text)  # the plain path (the fast split is tested)
        if sum(map(len, pieces)) != len(text):
            from lmspec.reference.tokenizer import pretokenize

            pretokenize(text, self._regex.pattern)  # raises, naming the unmatched text
            raise AssertionError("bpe_fast: pieces that do not tile, yet the reference's do")
        if self._encoder is None:
            return self._from_pieces(pieces)
        return self._encoder.encode(pieces, len(text))  # they tile: never None here

    def _from_pieces(self, pieces: list[str]) -> list[int]:
        """The Python path of the per-piece work (_core.c's ``encode``)."""
        ids = list(map(self._single.get, pieces))
        if None not in ids:
            return ids  # every piece is one token
        out: list[int] = []
        last, merged, find = 0, self._merged, ids.index
        for _ in range(ids.count(None)):
            i = find(None, last)  # the next piece to merge, found by a scan in C
            out += ids[last:i]
            out += merged(pieces[i])
            last = i + 1
        out += ids[last:]
        return out

    def encode_ordinary(self, text: str) -> list[int]:
        check_encode_args(text, {})
        return self._ordinary(_valid_unicode(text))

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
        dec = self._decoder
        try:
            return b"".join([dec[i] for i in ids])
        except (KeyError, TypeError):
            pass
        for k, i in enumerate(ids):
            if isinstance(i, bool) or not isinstance(i, int) or i not in dec:
                raise ValueError(f"ids: {i!r} at position {k} is not a token id "
                                 f"(n_vocab {self.n_vocab})") from None
        return b"".join([dec[i] for i in ids])

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        return self.decode_bytes(ids).decode("utf-8", errors=errors)


def _valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def tokenizer(ranks: Mapping[bytes, int], *, pattern: str,
              special_tokens: Mapping[str, int] | None = None) -> FastTokenizer:
    """The spec's constructor (its signature); the core is $LMSPEC_BPE_FAST_CORE's, else the
    compiled one where it was built (``FastTokenizer(..., core=)`` picks one directly)."""
    check_args(ranks, pattern=pattern, special_tokens=special_tokens)
    return FastTokenizer(ranks, pattern, special_tokens)
