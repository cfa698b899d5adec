"""Byte-level BPE training (Sennrich et al., 2016; GPT-2's byte-level form): the merge rule, its
tie-break and the id policy, stated exactly so that every trainer produces the same merges."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import strategies as st

from lmspec.spec._contract import Case, Component, ErrorCase, require


@dataclass(frozen=True)
class BPEModel:
    """A trained vocabulary: ``ranks`` (token bytes -> id, tiktoken's mergeable ranks, the
    input of ``tokenizer``), ``merges`` (every merge applied, in order), ``special_tokens``
    (text -> id) and the ``pattern`` it was trained with."""

    ranks: dict[bytes, int]
    merges: list[tuple[bytes, bytes]]
    special_tokens: dict[str, int]
    pattern: str


def bpe_train(texts: Sequence[str], *, vocab_size: int, pattern: str,
              special_tokens: Sequence[str] = ()) -> BPEModel:
    """Learn byte-level BPE merges from ``texts`` until the vocabulary has ``vocab_size`` ids.

    Words: each text is first cut at every occurrence of a special token's text (those
    occurrences are dropped: specials never take part in merges), then each remaining
    segment is pre-tokenized exactly as ``tokenizer`` does (the non-empty matches of
    ``pattern``, which must tile the segment, else ValueError naming ``texts``). A word is a
    piece's UTF-8 bytes; its weight is how often it occurs across all texts. A word starts as
    its sequence of single-byte tokens.

    Initial vocabulary: byte b has id b (0..255), whether or not it occurs.

    The merge rule, repeated while the vocabulary (bytes + merged tokens) has fewer than
    ``vocab_size - len(special_tokens)`` tokens:

    1. Count every adjacent pair of tokens in every word, weighted by the word's weight.
       Overlapping occurrences all count: the word ``aaa`` contributes 2 to ``(a, a)``.
    2. Choose the pair with the highest count. Tie-break: the smallest ``(left id, right id)``
       in lexicographic order (rustbpe's rule). If no pair has a count >= 1 (every word is a
       single token), stop early: the vocabulary is then smaller than asked.
    3. The new token's bytes are the concatenation; it gets the next id, ``256 + (number of
       merges so far)``: merge i has id 256 + i. Those bytes are never already a token, so
       HF tokenizers' rule (reuse the id of existing bytes) and rustbpe's (always a new id)
       agree. Why: boundaries between tokens are never erased, so when tokens L and R are
       adjacent in a word, their span had a boundary at both ends at every earlier step, and a
       left-to-right pass that cuts neither end acts on it exactly as on the bytes L + R alone.
       Had an earlier merge (L', R') made the bytes L + R, then L + R alone would have been
       [L', R'] at that step and one token ever since, never [L, R].
    4. Apply the merge in every word, left to right, without overlap: ``a a a`` becomes
       ``aa a``. Record ``(left bytes, right bytes)`` in ``merges``.

    Special tokens take the ids after the last token, in the order given. ``vocab_size``
    counts the 256 bytes, the merged tokens and the specials.

    Classic example (Wikipedia's 'aaabdaaabac', one word): (a, a) count 4 -> Z = aa (256);
    then (Z, a) and (a, b) both count 2, the tie goes to (97, 98) < (256, 97): Y = ab (257);
    then (Z, Y) count 2: X = aaab (258).

    Other trainers: rustbpe uses the same counts, tie-break and ids. HF's BpeTrainer reuses an
    id where a merge spells one of its own special tokens (a special ``ab`` gives merge
    (a, b) the special's id), and breaks ties by its own ids, which number the initial
    characters in the order of their byte-level stand-ins (GPT-2's bytes_to_unicode, space ->
    'Ġ') among those present only: it agrees wherever the top count is unique.

    Rejected: ``texts`` not a sequence of str (TypeError naming ``texts``); ``vocab_size`` not
    an int or < 256 + len(special_tokens) (ValueError naming ``vocab_size``); a ``pattern``
    that does not compile (ValueError naming ``pattern``); special tokens that are empty,
    not str or repeated (ValueError naming ``special_tokens``).
    """
    check_args(texts, vocab_size=vocab_size, pattern=pattern, special_tokens=special_tokens)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(texts: Sequence[str], *, vocab_size: int, pattern: str,
               special_tokens: Sequence[str] = ()) -> None:
    import regex

    require(not isinstance(texts, (str, bytes)) and isinstance(texts, Sequence), TypeError,
            f"texts: expected a sequence of str, got {type(texts).__name__}")
    require(all(isinstance(t, str) for t in texts), TypeError,
            "texts: expected a sequence of str, found a non-str item")
    require(isinstance(special_tokens, Sequence) and not isinstance(special_tokens, str),
            ValueError, "special_tokens: expected a sequence of str")
    require(all(isinstance(s, str) and s for s in special_tokens), ValueError,
            "special_tokens: expected non-empty str items")
    require(len(set(special_tokens)) == len(special_tokens), ValueError,
            "special_tokens: repeated special token")
    require(isinstance(vocab_size, int) and not isinstance(vocab_size, bool), ValueError,
            f"vocab_size: expected an int, got {vocab_size!r}")
    require(vocab_size >= 256 + len(special_tokens), ValueError,
            f"vocab_size: expected >= 256 + {len(special_tokens)} specials, got {vocab_size}")
    require(isinstance(pattern, str), ValueError,
            f"pattern: expected a regex string, got {type(pattern).__name__}")
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise ValueError(f"pattern: does not compile ({e})") from None


# ----------------------------------------------------------------------------- domain

GPT2_LIKE = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
WORDS = ("a", "b", "ab", "ba", "aa", "abc", "the", "then", "hat", "é", "日本", " ", "'s", "12",
         "\n", "  ")


@st.composite
def corpora(draw) -> Case:
    """Small corpora over a small alphabet (many ties), a few merges."""
    n = draw(st.integers(0, 6))
    texts = draw(st.lists(st.lists(st.sampled_from(WORDS), max_size=12).map("".join),
                          min_size=n, max_size=n))
    specials = draw(st.sampled_from(((), ("<|end|>",))))
    if specials and texts:
        texts[0] = texts[0] + "<|end|>" + texts[0]
    params = {"texts": texts, "vocab_size": 256 + len(specials) + draw(st.integers(0, 24)),
              "pattern": draw(st.sampled_from((GPT2_LIKE, r"(?s).+"))),
              "special_tokens": specials}
    return Case({}, params)


def _bad(**kwargs):
    def build():
        return {}, {"texts": ["ab ab"], "vocab_size": 260, "pattern": GPT2_LIKE,
                    "special_tokens": (), **kwargs}
    return build


COMPONENT = Component(
    stem="bpe_train",
    inputs=(),
    outputs=("model",),
    cases=corpora,
    errors=(
        ErrorCase("texts is one str", _bad(texts="ab ab"), TypeError, r"texts"),
        ErrorCase("vocab smaller than the bytes", _bad(vocab_size=255), ValueError,
                  r"vocab_size"),
        ErrorCase("no room for the specials", _bad(vocab_size=256, special_tokens=("<|e|>",)),
                  ValueError, r"vocab_size"),
        ErrorCase("pattern does not compile", _bad(pattern="(?<"), ValueError, r"pattern"),
        ErrorCase("repeated special", _bad(special_tokens=("<|e|>", "<|e|>")), ValueError,
                  r"special_tokens"),
    ),
    summary="byte-level BPE training: highest count, smallest (left, right) id on ties",
)
