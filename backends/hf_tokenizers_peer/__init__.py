"""The hf_tokenizers_peer backend: Hugging Face ``tokenizers`` (Rust) behind the spec's
``tokenizer`` protocol, loaded from the byte-level BPE tokenizer.json that
``lmspec.reference.save_hf_json`` writes. Dtype-free.

Adapter steps, every one listed (the report shows what the library does differently):
- ``tokenizer``: the spec's ``check_args``; the text ``save_hf_json`` writes (kept for the
  last few vocabularies); ``tokenizers.Tokenizer.from_str``; a pattern Oniguruma cannot
  compile (e.g. ``(?s)``) is a NotImplementedError. The file is the reference's; the
  library's reading of it (its regex engine, its id assignment for added tokens) is not
  corrected. ``n_vocab``: the largest id in the library's vocabulary (added tokens included)
  + 1.
- ``encode``: the spec's call checks, then tiktoken's disallowed-special check (tiktoken makes
  it in Python too, outside its core): ValueError. The library has one switch for special
  text, ``encode_special_tokens``: off when the specials present must become ids, on when they
  must stay text; a text that needs both: NotImplementedError. ``encode_ordinary``: the switch
  on. ``encode_batch``: the library's ``encode_batch`` (one switch for the batch).
  ``add_special_tokens=False`` everywhere (no post-processor tokens).
- ``decode``: ``Tokenizer.decode(skip_special_tokens=False)``; only ``errors="replace"``
  (the library has no other): NotImplementedError otherwise. ``decode_bytes``: the library has
  none; the bytes of ``id_to_token`` (ByteLevel alphabet; added tokens as UTF-8 text).
  Both after the spec's id check (the library silently drops unknown ids).
- ``bpe_train``: ``BpeTrainer`` on the same pre-tokenization (Split + ByteLevel without its
  own regex), all 256 bytes as initial alphabet, ``min_frequency=0``. Its merges are kept as
  they come; they are numbered by the spec's id policy (HF numbers specials first, then its
  alphabet in character order, which is also what its tie-break follows).
"""

from __future__ import annotations

from lmspec.backends._tokenizer_peers import asarray, to_numpy
from lmspec.backends.hf_tokenizers_peer.bpe_train import bpe_train
from lmspec.backends.hf_tokenizers_peer.tokenizer import tokenizer

NAME = "hf_tokenizers_peer"
DTYPES: tuple[str, ...] = ()

__all__ = ["DTYPES", "NAME", "asarray", "bpe_train", "to_numpy", "tokenizer"]

