"""The fastokens_peer backend: ``fastokens`` (a Rust reimplementation of the HF tokenizers
pipeline, PCRE2 regex) behind the spec's ``tokenizer`` protocol, loaded from the same
tokenizer.json as hf_tokenizers_peer (``lmspec.reference.save_hf_json``). Dtype-free.

Adapter steps, every one listed (the report shows what the library does differently):
- ``tokenizer``: the spec's ``check_args``; the text ``save_hf_json`` writes;
  ``fastokens.Tokenizer.from_json_str``; its refusal of a vocabulary whose ids have gaps
  ("unsupported model type") is a NotImplementedError. ``n_vocab``: the largest id the
  library holds + 1 (its ``vocab_size`` counts entries).
- ``encode``: the spec's call checks, then tiktoken's disallowed-special check (ValueError);
  the library's per-call ``split_special_tokens`` is off when the specials present must become
  ids, on when they must stay text; a text that needs both: NotImplementedError.
  ``encode_ordinary``: the library's ``encode_ordinary``; ``encode_batch``: its
  ``encode_batch`` (one switch for the batch).
- ``decode``: ``decode(skip_special_tokens=False)``, only ``errors="replace"``.
  ``decode_bytes``: the bytes of ``id_to_token`` (ByteLevel alphabet; added tokens as UTF-8
  text). Both after the spec's id check (the library silently drops unknown ids).
"""

from __future__ import annotations

from lmspec.backends._tokenizer_peers import asarray, to_numpy
from lmspec.backends.fastokens_peer.tokenizer import tokenizer

NAME = "fastokens_peer"
DTYPES: tuple[str, ...] = ()

__all__ = ["DTYPES", "NAME", "asarray", "to_numpy", "tokenizer"]

