"""Benchmark of byte-level BPE training: the reference trainer (recounts every pair before each
merge), bpe_fast (incremental counts) and HF tokenizers' BpeTrainer, single-threaded, on the
first 1 MiB of the stdlib sources at vocabulary 4096 (issue 3's gate: bpe_fast >= 20x the
reference). The reference takes minutes there: it runs once, one round, no warm-up."""

from __future__ import annotations

import os

# single-threaded: HF's trainer counts words on a rayon pool, which reads this when it starts
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from functools import cache  # noqa: E402

import pytest  # noqa: E402

from lmspec.conformance import _bench  # noqa: E402
from lmspec.conformance._tokenizer_cli import stdlib_corpus  # noqa: E402

# (label, corpus bytes, vocab_size)
SHAPES = [("64KiB-v512", 64 << 10, 512)] if _bench.QUICK else [("1MiB-v4096", 1 << 20, 4096)]
ROUNDS = 2 if _bench.QUICK else 3


@cache
def corpus(n_bytes: int) -> tuple[str, ...]:
    return tuple(stdlib_corpus(n_bytes))


def _impls() -> list:
    return [pytest.param(b, id=b.name) for b in _bench.selected_backends()
            if b.has("bpe_train")]


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("backend", _impls())
def test_bpe_train(benchmark, backend, shape):
    from lmspec.spec.tokenizer import PRESETS

    _, n_bytes, vocab_size = shape
    texts = list(corpus(n_bytes))
    fn = backend.fn("bpe_train")
    kwargs = {"vocab_size": vocab_size, "pattern": PRESETS["cl100k_base"].pattern,
              "special_tokens": ("<|endoftext|>",)}
    benchmark.extra_info.update(impl=backend.name, bytes=sum(len(t.encode()) for t in texts),
                                dtype="-")  # dtype-free
    slow = backend.name == "reference"
    benchmark.pedantic(lambda: fn(texts, **kwargs), rounds=1 if slow else ROUNDS,
                       iterations=1, warmup_rounds=0)
