"""The tiktoken_peer backend: OpenAI's ``tiktoken`` (Rust BPE core, Python wrapper) behind the
spec's ``tokenizer`` protocol. Dtype-free: it runs no numeric component.

Adapter steps, every one listed (the report shows what the library does differently):
- ``tokenizer``: the spec's ``check_args`` first, then
  ``tiktoken.Encoding(pat_str=pattern, mergeable_ranks=ranks, special_tokens=...)``.
- ``encode`` / ``encode_ordinary`` / ``encode_batch``: the Encoding's methods as they are
  (``encode_batch`` with ``num_threads=1``), after the spec's call checks (``text`` a str,
  special names known; tiktoken ignores unknown names).
- ``decode_bytes`` / ``decode``: the spec's id check first (tiktoken raises KeyError for an id
  that is no token; the spec wants ValueError naming ``ids``).
"""

from __future__ import annotations

from lmspec.backends._tokenizer_peers import asarray, to_numpy
from lmspec.backends.tiktoken_peer.tokenizer import tokenizer

NAME = "tiktoken_peer"
DTYPES: tuple[str, ...] = ()

__all__ = ["DTYPES", "NAME", "asarray", "to_numpy", "tokenizer"]

