"""tiktoken (OpenAI's Rust BPE) as a ``tokenizer`` backend: ``tiktoken.Encoding`` built from the
spec's ranks, pattern and special tokens, called as users call it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tiktoken

from lmspec.backends._tokenizer_peers import checked_ids
from lmspec.spec.tokenizer import SpecialSet, check_args, check_encode_args


class TiktokenTokenizer:
    """The spec's ``Tokenizer`` protocol over one ``tiktoken.Encoding``; each method is the
    Encoding's method of the same name (``encode_batch`` single-threaded)."""

    def __init__(self, encoding: tiktoken.Encoding, ranks: Mapping[bytes, int],
                 special_tokens: Mapping[str, int]):
        self.encoding = encoding
        self.special_tokens = dict(special_tokens)
        self._known = frozenset(ranks.values()) | frozenset(self.special_tokens.values())
        self.n_vocab = encoding.n_vocab

    def encode(self, text: str, *, allowed_special: SpecialSet = frozenset(),
               disallowed_special: SpecialSet = "all") -> list[int]:
        check_encode_args(text, self.special_tokens, allowed_special, disallowed_special)
        return self.encoding.encode(text, allowed_special=allowed_special,
                                    disallowed_special=disallowed_special)

    def encode_ordinary(self, text: str) -> list[int]:
        check_encode_args(text, self.special_tokens)
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], *, allowed_special: SpecialSet = frozenset(),
                     disallowed_special: SpecialSet = "all") -> list[list[int]]:
        texts = list(texts)
        for t in texts:
            check_encode_args(t, self.special_tokens, allowed_special, disallowed_special)
        return self.encoding.encode_batch(texts, num_threads=1,
                                          allowed_special=allowed_special,
                                          disallowed_special=disallowed_special)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.encoding.decode_bytes(checked_ids(ids, self._known))

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        return self.encoding.decode(checked_ids(ids, self._known), errors=errors)


def tokenizer(ranks: Mapping[bytes, int], *, pattern: str,
              special_tokens: Mapping[str, int] | None = None) -> TiktokenTokenizer:
    check_args(ranks, pattern=pattern, special_tokens=special_tokens)
    specials = dict(special_tokens or {})
    enc = tiktoken.Encoding("lmspec", pat_str=pattern, mergeable_ranks=dict(ranks),
                            special_tokens=specials)
    return TiktokenTokenizer(enc, ranks, specials)
