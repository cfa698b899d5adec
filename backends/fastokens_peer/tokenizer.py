"""fastokens (a Rust reimplementation of HF tokenizers' pipeline) as a ``tokenizer`` backend:
``fastokens.Tokenizer.from_json_str`` on the tokenizer.json that the reference's ``save_hf_json``
writes from the spec's vocabulary (the same file the HF backend loads)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import fastokens

from lmspec.backends._tokenizer_peers import (
    batch_mode,
    checked_ids,
    hf_json,
    library_regex,
    special_mode,
    token_bytes,
)
from lmspec.spec.tokenizer import SpecialSet, check_args, check_encode_args


class FastokensTokenizer:
    """The spec's ``Tokenizer`` protocol over one ``fastokens.Tokenizer``: special text is
    recognised or not through its per-call ``split_special_tokens`` (see
    ``lmspec.backends._tokenizer_peers.special_mode``); nothing it returns is corrected."""

    def __init__(self, tok: fastokens.Tokenizer, ranks: Mapping[bytes, int],
                 special_tokens: Mapping[str, int]):
        self.tok = tok
        self.special_tokens = dict(special_tokens)
        self._known = frozenset(ranks.values()) | frozenset(self.special_tokens.values())
        self._added = frozenset(t["id"] for t in tok.added_tokens())
        # as fastokens sees it: its vocab_size counts entries; its model ids have no gaps
        self.n_vocab = max(tok.vocab_size - len(self._added), max(self._added, default=-1) + 1)

    def encode(self, text: str, *, allowed_special: SpecialSet = frozenset(),
               disallowed_special: SpecialSet = "all") -> list[int]:
        mode = special_mode(text, self.special_tokens, allowed_special, disallowed_special)
        return list(self.tok.encode(text, split_special_tokens=not mode).ids)

    def encode_ordinary(self, text: str) -> list[int]:
        check_encode_args(text, self.special_tokens)
        return list(self.tok.encode_ordinary(text).ids)

    def encode_batch(self, texts: Sequence[str], *, allowed_special: SpecialSet = frozenset(),
                     disallowed_special: SpecialSet = "all") -> list[list[int]]:
        texts = list(texts)
        mode = batch_mode([special_mode(t, self.special_tokens, allowed_special,
                                        disallowed_special) for t in texts])
        return [list(e.ids) for e in self.tok.encode_batch(texts, split_special_tokens=not mode)]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        ids = checked_ids(ids, self._known)
        return b"".join(token_bytes(self.tok.id_to_token(i) or "", i in self._added)
                        for i in ids)

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        ids = checked_ids(ids, self._known)
        if errors != "replace":
            raise NotImplementedError(f"fastokens decodes with errors='replace' only, "
                                      f"not {errors!r}")
        return self.tok.decode(ids, skip_special_tokens=False)


def tokenizer(ranks: Mapping[bytes, int], *, pattern: str,
              special_tokens: Mapping[str, int] | None = None) -> FastokensTokenizer:
    check_args(ranks, pattern=pattern, special_tokens=special_tokens)
    specials = dict(special_tokens or {})
    text = hf_json(ranks, pattern, specials)
    try:
        tok = library_regex(lambda: fastokens.Tokenizer.from_json_str(text), pattern)
    except ValueError as e:
        if "unsupported model type" in str(e) and max(ranks.values()) != len(ranks) - 1:
            raise NotImplementedError(f"fastokens refuses a tokenizer.json whose vocabulary "
                                      f"ids have gaps ({e})") from None
        raise
    return FastokensTokenizer(tok, ranks, specials)
