"""bpe_fast: our fast byte-level BPE, in Python (plus ``regex``, a base dependency of lmspec) with
one small compiled part.

Encoder: the preset patterns on stdlib ``re`` over ASCII text (_pretokenize.py: the narrowing
and the cuts of mixed text are proven there), then the per-piece work in C (_core.c, built at
install by setup.py; optional): whole pieces looked up in a hash table of the vocabulary's
bytes (tiktoken's whole-piece shortcut), the rest merged with a heap over a linked list and
kept in a bounded cache. Without a C compiler the same per-piece work runs in Python
(tokenizer.py; ``FastTokenizer(..., core="python")`` or ``LMSPEC_BPE_FAST_CORE=python`` asks
for it).
Trainer: incremental pair counts with an index of the words where each pair occurs and a
lazy-deletion heap; it produces exactly the reference's merges. Dtype-free: ``DTYPES = ()``.
"""

from __future__ import annotations

from lmspec.backends.bpe_fast.bpe_train import bpe_train, train
from lmspec.backends.bpe_fast.tokenizer import FastTokenizer, tokenizer

NAME = "bpe_fast"
DTYPES: tuple[str, ...] = ()

__all__ = ["DTYPES", "NAME", "FastTokenizer", "asarray", "bpe_train", "to_numpy", "tokenizer",
           "train"]


def asarray(a, dtype):
    raise NotImplementedError("bpe_fast tokenizes text: it has no array type")


def to_numpy(t):
    raise NotImplementedError("bpe_fast tokenizes text: it has no array type")
