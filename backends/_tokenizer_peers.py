"""What the tokenizer-library adapters (tiktoken_peer, hf_tokenizers_peer, fastokens_peer) share:
the spec's id check, tiktoken's disallowed-special check (which tiktoken itself makes in Python,
outside its Rust core), the choice of a library's special-token mode for a call, byte-level token
strings back to bytes, the tokenizer.json text of a vocabulary, and a library's refusal of a
pattern as NotImplementedError. No third-party import: each library stays optional."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping, Sequence
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import regex

from lmspec.spec.tokenizer import SpecialSet, check_encode_args, check_ids


def asarray(a: np.ndarray, dtype: str | None) -> np.ndarray:
    """The backend protocol's array hooks: the tokenizer libraries take and give NumPy."""
    return np.asarray(a)


def to_numpy(t) -> np.ndarray:
    return np.asarray(t)


def checked_ids(ids: Sequence[int], known: frozenset[int]) -> list[int]:
    """The spec's decode check: a ValueError naming ``ids`` for an id that is no token (the
    libraries raise KeyError, OverflowError, or silently drop it)."""
    check_ids(ids)
    ids = list(ids)
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or i not in known:
            raise ValueError(f"ids: {i!r} is not a token id of this vocabulary")
    return ids


@lru_cache(maxsize=16)
def _special_regex(specials: frozenset[str]) -> regex.Pattern | None:
    texts = sorted(specials, key=lambda t: (-len(t), t))  # the longest at one position
    return regex.compile("|".join(map(regex.escape, texts))) if texts else None


def special_mode(text: str, special_tokens: Mapping[str, int], allowed_special: SpecialSet,
                 disallowed_special: SpecialSet) -> bool | None:
    """For one encode call: the spec's checks, then ValueError for disallowed special text
    (as tiktoken's ``Encoding.encode`` does before calling its core). Returns True if the
    special texts in ``text`` must all become special ids, False if they must all be plain
    text, None if there is none. A text that needs both cannot be encoded by a library whose
    mode is one switch per call: NotImplementedError."""
    allowed, disallowed = check_encode_args(text, special_tokens, allowed_special,
                                            disallowed_special)
    rx = _special_regex(frozenset(special_tokens))
    found = {m.group() for m in rx.finditer(text)} if rx else set()
    bad = sorted(found & disallowed)
    if bad:
        raise ValueError(f"Encountered text corresponding to disallowed special token "
                         f"{bad[0]!r}; pass it in allowed_special, or disallowed_special=()")
    special, plain = found & allowed, found - allowed
    if special and plain:
        raise NotImplementedError(
            "the library treats all added tokens alike within one call: it cannot encode "
            f"{sorted(special)} as special and {sorted(plain)} as text together")
    return True if special else (False if plain else None)


def batch_mode(modes: Sequence[bool | None]) -> bool:
    """One mode for a batch call, or NotImplementedError if its texts need different ones."""
    chosen = {m for m in modes if m is not None}
    if len(chosen) > 1:
        raise NotImplementedError("the library's special-token mode is one switch per batch; "
                                  "these texts need both")
    return chosen.pop() if chosen else False


@cache
def _unicode_to_bytes() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode`` (HF's ByteLevel alphabet)."""
    keep = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    table = {b: chr(b) for b in keep}
    extra = (b for b in range(256) if b not in table)
    table.update({b: chr(256 + n) for n, b in enumerate(extra)})
    return {c: b for b, c in table.items()}


def token_bytes(token: str, special: bool) -> bytes:
    """The bytes of one token string as the library reports it (``id_to_token``): an added
    (special) token is its UTF-8 text, a model token is spelled in the ByteLevel alphabet."""
    if special:
        return token.encode("utf-8")
    table = _unicode_to_bytes()
    return bytes(table[c] for c in token)


_JSON_CACHE: dict[str, str] = {}


def hf_json(ranks: Mapping[bytes, int], pattern: str, special_tokens: Mapping[str, int]) -> str:
    """The tokenizer.json text that the reference's ``save_hf_json`` writes for this vocabulary,
    kept for the last few vocabularies (writing it takes seconds for cl100k; a fresh library
    object is then built from the text, so no library state is shared)."""
    from lmspec.reference.tokenizer import save_hf_json

    h = hashlib.sha256(pattern.encode("utf-8", "surrogatepass"))
    for tok, rank in ranks.items():
        h.update(len(tok).to_bytes(4, "little") + tok + rank.to_bytes(8, "little"))
    for text, sid in special_tokens.items():
        h.update(text.encode("utf-8", "surrogatepass") + b"\0" + sid.to_bytes(8, "little"))
    key = h.hexdigest()
    if key not in _JSON_CACHE:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "tokenizer.json"
            save_hf_json(ranks, path, pattern=pattern, special_tokens=special_tokens)
            text = path.read_text(encoding="utf-8")
        if len(_JSON_CACHE) >= 4:
            _JSON_CACHE.pop(next(iter(_JSON_CACHE)))
        _JSON_CACHE[key] = text
    return _JSON_CACHE[key]


def library_regex(build, pattern: str):
    """``build()`` a library object from ``pattern``; a pattern its regex engine cannot compile
    (the spec's ``regex`` module compiled it) is a NotImplementedError naming the engine's
    complaint, e.g. Oniguruma's "undefined group option" for ``(?s)``."""
    try:
        return build()
    except Exception as e:
        if "regex" in str(e).lower() or "oniguruma" in str(e).lower() or "pcre" in str(
                e).lower():
            raise NotImplementedError(f"the library cannot compile pattern {pattern!r}: "
                                      f"{e}") from None
        raise
