"""HF ``tokenizers`` (Rust) as a ``tokenizer`` backend: ``Tokenizer.from_str`` on the byte-level
BPE tokenizer.json that the reference's ``save_hf_json`` writes from the spec's vocabulary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tokenizers

from lmspec.backends._tokenizer_peers import (
    batch_mode,
    checked_ids,
    hf_json,
    library_regex,
    special_mode,
    token_bytes,
)
from lmspec.spec.tokenizer import SpecialSet, check_args, check_encode_args


class HFTokenizer:
    """The spec's ``Tokenizer`` protocol over one ``tokenizers.Tokenizer``. Special text is
    recognised or not through the library's ``encode_special_tokens`` switch (see
    ``lmspec.backends._tokenizer_peers.special_mode``); nothing it returns is corrected."""

    def __init__(self, tok: tokenizers.Tokenizer, ranks: Mapping[bytes, int],
                 special_tokens: Mapping[str, int]):
        self.tok = tok
        self.special_tokens = dict(special_tokens)
        self._known = frozenset(ranks.values()) | frozenset(self.special_tokens.values())
        self.n_vocab = max(tok.get_vocab(with_added_tokens=True).values()) + 1  # as HF sees it

    def _encode(self, texts: list[str], plain: bool) -> list[list[int]]:
        self.tok.encode_special_tokens = plain
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def encode(self, text: str, *, allowed_special: SpecialSet = frozenset(),
               disallowed_special: SpecialSet = "all") -> list[int]:
        mode = special_mode(text, self.special_tokens, allowed_special, disallowed_special)
        self.tok.encode_special_tokens = not mode
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_ordinary(self, text: str) -> list[int]:
        check_encode_args(text, self.special_tokens)
        self.tok.encode_special_tokens = True
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], *, allowed_special: SpecialSet = frozenset(),
                     disallowed_special: SpecialSet = "all") -> list[list[int]]:
        texts = list(texts)
        mode = batch_mode([special_mode(t, self.special_tokens, allowed_special,
                                        disallowed_special) for t in texts])
        return self._encode(texts, plain=not mode)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        ids = checked_ids(ids, self._known)
        added = self.tok.get_added_tokens_decoder()
        return b"".join(token_bytes(self.tok.id_to_token(i) or "", i in added) for i in ids)

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        ids = checked_ids(ids, self._known)
        if errors != "replace":
            raise NotImplementedError(f"HF tokenizers decodes with errors='replace' only, "
                                      f"not {errors!r}")
        return self.tok.decode(ids, skip_special_tokens=False)


def tokenizer(ranks: Mapping[bytes, int], *, pattern: str,
              special_tokens: Mapping[str, int] | None = None) -> HFTokenizer:
    check_args(ranks, pattern=pattern, special_tokens=special_tokens)
    specials = dict(special_tokens or {})
    text = hf_json(ranks, pattern, specials)
    tok = library_regex(lambda: tokenizers.Tokenizer.from_str(text), pattern)
    return HFTokenizer(tok, ranks, specials)
