"""bpe_fast: our fast byte-level BPE in pure Python (plus ``regex``, a base dependency of lmspec).

Encoder: the preset patterns on stdlib ``re`` over ASCII text (_pretokenize.py: the narrowing
and the cuts of mixed text are proven there), whole pieces looked up in a str -> id map of the
vocabulary all at once, tiktoken's whole-piece shortcut, and a bounded cache of the pieces that
take merging (a rescanning merge for short ones, a heap + linked list for long ones).
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
