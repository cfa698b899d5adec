"""The trainer's data, with no download: the running Python's stdlib sources as the corpus, a
byte-level BPE vocabulary trained on it (spec/bpe_train.py, through a backend of the
registry), documents packed into fixed-length rows with segment ids (the input of
spec/model.py's ``model_loss``), and a deterministic, resumable batch order."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmspec import backends
from lmspec.spec.model import IGNORE_INDEX
from lmspec.spec.tokenizer import PRESETS, Tokenizer

EOS = "<|endoftext|>"
PATTERN = PRESETS["gpt2"].pattern  # on 5 MB of stdlib, vocab 512: 2.07 B/token vs cl100k's 2.02
TEST_DIRS = frozenset({"test", "tests", "idle_test"})
BACKEND = "bpe_fast"  # 1 MB of stdlib, vocab 512, 2 cores: trains in 0.4 s (reference: 6.2 s)

# ----------------------------------------------------------------------------- corpus


def corpus_paths(*, include_tests: bool = False) -> list[str]:
    """The stdlib's ``*.py`` files as paths relative to its root (``sysconfig``'s "stdlib"),
    sorted as POSIX strings; site-/dist-packages always excluded, test folders unless asked."""
    return list(_corpus_paths(bool(include_tests)))


@functools.lru_cache(maxsize=2)  # the walk takes 0.3 s on the 2-core machine; files are fixed
def _corpus_paths(include_tests: bool) -> tuple[str, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in root.rglob("*.py"):
        parts = p.relative_to(root).parts
        if {"site-packages", "dist-packages"} & set(parts):
            continue
        if not include_tests and TEST_DIRS & set(parts[:-1]):
            continue
        out.append(p.relative_to(root).as_posix())
    return tuple(sorted(out))


def corpus_documents(max_bytes: int | None = None, *, include_tests: bool = False) -> list[str]:
    """The default corpus: one document per stdlib file of ``corpus_paths``, in that order,
    each the file's bytes decoded as UTF-8 (no newline translation: ``\\r\\n`` stays). Files
    that do not decode, and empty files, are skipped. ``max_bytes`` caps the total UTF-8
    size: documents are taken in order until the next one would pass the cap (so a smaller
    cap gives a prefix of a larger cap's list). Deterministic on a given Python."""
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)
                                  or max_bytes < 0):
        raise ValueError(f"max_bytes: expected an integer >= 0 or None, got {max_bytes!r}")
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for rel in corpus_paths(include_tests=include_tests):
        try:
            text = (root / rel).read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a few test files are deliberately not UTF-8
        size = len(text.encode("utf-8"))
        if not size:
            continue
        if max_bytes is not None and total + size > max_bytes:
            break
        docs.append(text)
        total += size
    return docs


def split(docs: Sequence[str], every: int = 20) -> tuple[list[str], list[str]]:
    """(train, held out) by document: document i is held out iff ``i % every == every - 1``.
    By index in the corpus order, so a prefix of the corpus splits as a prefix of the split."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 2:
        raise ValueError(f"every: expected an integer >= 2, got {every!r}")
    train = [d for i, d in enumerate(docs) if i % every != every - 1]
    return train, [d for i, d in enumerate(docs) if i % every == every - 1]


# ----------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class Vocabulary:
    """A trained vocabulary: ``tokens[i]`` the bytes of id i (0..255 the bytes, then the
    merges in order), then ``EOS`` with id ``len(tokens)``; the ``pattern`` pre-tokenizes."""

    tokens: tuple[bytes, ...]
    pattern: str = PATTERN

    @property
    def eos_id(self) -> int:
        return len(self.tokens)

    @property
    def n_vocab(self) -> int:
        return len(self.tokens) + 1

    def tokenizer(self, backend: str = BACKEND) -> Tokenizer:
        """The spec's tokenizer over this vocabulary, from the named backend of the registry."""
        ranks = {t: i for i, t in enumerate(self.tokens)}
        make = backends.load(backend).fn("tokenizer")
        return make(ranks, pattern=self.pattern, special_tokens={EOS: self.eos_id})

    def to_json(self) -> dict:
        return {"pattern": self.pattern, "eos": EOS, "tokens": [t.hex() for t in self.tokens]}

    @classmethod
    def from_json(cls, d: dict) -> Vocabulary:
        if d.get("eos") != EOS:
            raise ValueError(f"vocabulary: expected eos {EOS!r}, got {d.get('eos')!r}")
        return cls(tuple(bytes.fromhex(t) for t in d["tokens"]), d["pattern"])


def _key(texts: Sequence[str], vocab_size: int, pattern: str) -> str:
    h = hashlib.sha256(json.dumps([vocab_size, pattern, EOS]).encode())
    for t in texts:
        data = t.encode("utf-8")
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:20]


def train_vocabulary(texts: Sequence[str], vocab_size: int = 512, *, pattern: str = PATTERN,
                     backend: str = BACKEND, cache_dir: str | Path | None = None) -> Vocabulary:
    """Byte-level BPE (spec/bpe_train.py) on ``texts`` up to ``vocab_size`` ids, EOS included
    (its id is the last: ``n_vocab <= vocab_size``, smaller if the merges ran out). EOS is not
    a special of the training: the texts are trained, and encoded, as plain text. With
    ``cache_dir`` the result is kept there as JSON, keyed by the texts, size and pattern."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 257:
        raise ValueError(f"vocab_size: expected an integer >= 257 (256 bytes + EOS), got "
                         f"{vocab_size!r}")
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts: expected a sequence of str")
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"vocab-{_key(texts, vocab_size, pattern)}.json"
        if path.exists():
            try:
                return Vocabulary.from_json(json.loads(path.read_text()))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}: not a vocabulary ({e}); delete it to retrain") \
                    from None
    model = backends.load(backend).fn("bpe_train")(list(texts), vocab_size=vocab_size - 1,
                                                   pattern=pattern)
    by_id = sorted(model.ranks.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise RuntimeError(f"{backend}'s bpe_train left gaps in the ids (spec: 256 + merge i)")
    vocab = Vocabulary(tuple(t for t, _ in by_id), pattern)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(vocab.to_json()))
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    return vocab


def encode(tok: Tokenizer, docs: Sequence[str]) -> list[np.ndarray]:
    """Each document's ids (int32), as plain text: EOS's text inside a file is not EOS."""
    return [np.asarray(tok.encode_ordinary(d), np.int32) for d in docs]


# ----------------------------------------------------------------------------- packing


def pack(docs: Sequence[Sequence[int]], seq_len: int, eos_id: int) -> dict[str, np.ndarray]:
    """Rows of ``model_loss``'s inputs: ``tokens``, ``targets``, ``segment_ids``, each
    (N, seq_len) int32.

    The stream is every document followed by ``eos_id``, laid end to end and cut into rows of
    ``seq_len``; a document longer than what is left of a row continues in the next row as a
    new segment (its positions restart at 0 there). A token's target is the next token of the
    stream when both lie in the same document and the same row, else ``IGNORE_INDEX``: so EOS
    predicts nothing, and each row's last target is ignored (one per row lost at a cut, so
    that no target crosses a segment). Segment ids are the document's index; the last row is
    padded with token ``eos_id``, segment id ``len(docs)`` and ignored targets.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len: expected an integer >= 1, got {seq_len!r}")
    if isinstance(eos_id, bool) or not isinstance(eos_id, (int, np.integer)) or eos_id < 0:
        raise ValueError(f"eos_id: expected an integer >= 0, got {eos_id!r}")
    lengths = np.array([len(d) + 1 for d in docs], np.int64)
    stream = np.full(int(lengths.sum()), eos_id, np.int32)
    ends = np.cumsum(lengths)
    for d, end in zip(docs, ends):
        stream[end - 1 - len(d):end - 1] = d
    doc = np.repeat(np.arange(len(docs), dtype=np.int32), lengths)
    n = -(-len(stream) // seq_len)  # rows, the last one padded
    pad = n * seq_len - len(stream)
    tokens = np.concatenate([stream, np.full(pad, eos_id, np.int32)]).reshape(n, seq_len)
    seg = np.concatenate([doc, np.full(pad, len(docs), np.int32)]).reshape(n, seq_len)
    targets = np.full((n, seq_len), IGNORE_INDEX, np.int32)
    same = seg[:, 1:] == seg[:, :-1]
    same &= seg[:, :-1] != len(docs)  # padding predicts nothing
    targets[:, :-1] = np.where(same, tokens[:, 1:], IGNORE_INDEX)
    return {"tokens": tokens, "targets": targets, "segment_ids": seg}


def unigram_entropy(ids: np.ndarray) -> float:
    """Entropy (nats/token) of the ids' empirical distribution, ``IGNORE_INDEX`` left out: the
    loss of a model that knows token frequencies and nothing else, when given the targets of
    the rows it is measured on."""
    ids = np.asarray(ids).ravel()
    ids = ids[ids != IGNORE_INDEX]
    if ids.size == 0:
        raise ValueError("ids: expected at least one id that is not IGNORE_INDEX")
    counts = np.bincount(ids)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# ----------------------------------------------------------------------------- batches


class Batches:
    """An endless iterator over ``{tokens, targets, segment_ids}``, each (A, B, T): A
    micro-batches of B rows. Epoch e visits the rows in ``default_rng((seed, e))``'s
    permutation, ``len(rows) // (A B)`` steps (the remainder waits for later epochs' orders).
    ``state_dict()`` is where it stands; ``load_state_dict`` resumes exactly there, and
    refuses a state saved for other rows (their SHA-256 ``fingerprint``), another seed or
    another number of rows per step."""

    def __init__(self, rows: dict[str, np.ndarray], batch_size: int, micro_batches: int = 1,
                 seed: int = 0):
        for name, v in (("batch_size", batch_size), ("micro_batches", micro_batches)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
        if "tokens" not in rows or len({len(v) for v in rows.values()}) != 1:
            raise ValueError("rows: expected 'tokens' and arrays of one length (pack's output)")
        self.rows, self.seed = rows, int(seed)
        self.shape = (int(micro_batches), int(batch_size))
        self.n_rows = len(rows["tokens"])
        self.steps_per_epoch = self.n_rows // (self.shape[0] * self.shape[1])
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch_size: {micro_batches} x {batch_size} rows per step, "
                             f"only {self.n_rows} rows")
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)
        self._fingerprint: str | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.seed, epoch)).permutation(self.n_rows)

    @property
    def fingerprint(self) -> str:
        """SHA-256 (16 hex digits) of the rows: names, dtypes, shapes and bytes."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for k in sorted(self.rows):
                a = np.ascontiguousarray(self.rows[k])
                h.update(json.dumps([k, a.dtype.str, a.shape]).encode() + a.tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.index == self.steps_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        a, b = self.shape
        take = self._order[self.index * a * b:(self.index + 1) * a * b]
        self.index += 1
        return {k: v[take].reshape(a, b, -1) for k, v in self.rows.items()}  # (A, B, T)

    def state_dict(self) -> dict:
        """JSON-safe: the next batch is step ``index`` of epoch ``epoch``."""
        return {"seed": self.seed, "epoch": self.epoch, "index": self.index,
                "n_rows": self.n_rows, "rows_per_step": self.shape[0] * self.shape[1],
                "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        missing = sorted(set(mine) - set(state)) if isinstance(state, dict) else sorted(mine)
        if missing:
            raise ValueError(f"state: missing {missing} (expected Batches.state_dict())")
        for k, why in (("n_rows", "other data?"), ("rows_per_step", "another batch shape?"),
                       ("fingerprint", "other rows: corpus, vocabulary or seq_len"),
                       ("seed", "another seed: another order")):
            if state[k] != mine[k]:
                raise ValueError(f"state: {k} {state[k]!r} saved, {mine[k]!r} here ({why})")
        epoch, index = state["epoch"], state["index"]
        if not (isinstance(epoch, int) and epoch >= 0 and isinstance(index, int)
                and 0 <= index <= self.steps_per_epoch):
            raise ValueError(f"state: epoch {epoch!r}, index {index!r}: expected epoch >= 0 "
                             f"and 0 <= index <= {self.steps_per_epoch}")
        self.epoch, self.index = epoch, index
        self._order = self._permutation(epoch)


def in_order(rows: dict[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Every row once, in order, (B, T) batches, the last one smaller: a validation pass."""
    for i in range(0, len(rows["tokens"]), batch_size):
        yield {k: v[i:i + batch_size] for k, v in rows.items()}


# ----------------------------------------------------------------------------- all of it


@dataclass(frozen=True)
class Data:
    """What a training run reads: the vocabulary, packed train and held-out rows, and the
    unigram entropy of the train targets (the bar the validation loss must fall below)."""

    vocab: Vocabulary
    train: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    entropy: float


def default_data(seq_len: int, *, vocab_size: int = 512, max_bytes: int = 2_000_000,
                 vocab_bytes: int = 1_000_000, every: int = 20, backend: str = BACKEND,
                 cache_dir: str | Path | None = None) -> Data:
    """The default corpus (``max_bytes``), split by ``every``; the vocabulary trained on the
    train documents' first ``vocab_bytes``; both splits encoded and packed."""
    train_docs, valid_docs = split(corpus_documents(max_bytes), every)
    if not valid_docs:
        raise ValueError(f"max_bytes: {max_bytes} bytes of the corpus give "
                         f"{len(train_docs)} documents, none held out at every={every}: "
                         "raise max_bytes or lower every")
    head, size = [], 0
    for d in train_docs:
        size += len(d.encode("utf-8"))
        if head and size > vocab_bytes:
            break
        head.append(d)
    vocab = train_vocabulary(head, vocab_size, backend=backend, cache_dir=cache_dir)
    tok = vocab.tokenizer(backend)
    train = pack(encode(tok, train_docs), seq_len, vocab.eos_id)
    valid = pack(encode(tok, valid_docs), seq_len, vocab.eos_id)
    return Data(vocab, train, valid, unigram_entropy(train["targets"]))
