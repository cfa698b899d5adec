"""``lmspec tokenizer train|encode|decode``, and the corpus that needs no download: the running
Python's own standard-library sources (also the benchmarks' text)."""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from lmspec.conformance.cli import CliError

PRESET_NAMES = ("gpt2", "cl100k_base", "o200k_base")


# ----------------------------------------------------------------------------- corpus


def stdlib_files() -> list[Path]:
    """The stdlib's ``*.py`` files in a fixed order (sorted paths; site-packages excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py")
                  if "site-packages" not in p.parts and "dist-packages" not in p.parts)


def _texts(paths: list[Path]) -> Iterator[str]:
    for p in paths:
        try:
            yield p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a few test files are deliberately not UTF-8


def read_corpus(paths: list[Path], max_bytes: int) -> list[str]:
    """Whole files, in order, until ``max_bytes`` UTF-8 bytes (the last one cut)."""
    out, n = [], 0
    for text in _texts(paths):
        data = text.encode("utf-8")
        if n + len(data) >= max_bytes:
            out.append(data[:max_bytes - n].decode("utf-8", "ignore"))
            break
        out.append(text)
        n += len(data)
    return out


def stdlib_corpus(max_bytes: int) -> list[str]:
    """The first ``max_bytes`` of the stdlib sources, one text per file."""
    return read_corpus(stdlib_files(), max_bytes)


def text_chunks(n_bytes: int, count: int) -> list[str]:
    """``count`` texts of exactly ``n_bytes`` UTF-8 bytes each, from the stdlib sources taken
    from the end (so disjoint from ``stdlib_corpus`` at any size a benchmark trains on); a
    chunk cut inside a character is padded with spaces."""
    joined = "".join(read_corpus(stdlib_files()[::-1], n_bytes * count + 4 * count))
    data = joined.encode("utf-8")
    if len(data) < n_bytes * count:
        raise RuntimeError(f"the stdlib sources hold only {len(data)} bytes")
    out = []
    for k in range(count):
        text = data[k * n_bytes:(k + 1) * n_bytes].decode("utf-8", "ignore")
        out.append(text + " " * (n_bytes - len(text.encode("utf-8"))))
    return out


# ----------------------------------------------------------------------------- vocabularies


def load_vocab(spec: str) -> tuple[dict[bytes, int], str, dict[str, int]]:
    """A preset name, a ``.tiktoken`` rank file (the cl100k pattern and no specials unless a
    ``<file>.json`` sidecar written by ``train`` says otherwise) or an HF ``tokenizer.json``."""
    from lmspec import reference as R
    from lmspec.spec.tokenizer import PRESETS

    if spec in PRESET_NAMES:
        try:
            return R.load_preset(spec)
        except ImportError as e:
            raise CliError(str(e)) from None
    path = Path(spec)
    if not path.exists():
        raise CliError(f"--vocab: {spec!r} is neither a preset ({', '.join(PRESET_NAMES)}) "
                       "nor an existing file")
    if path.suffix == ".json":
        return R.load_hf_json(path)
    ranks = R.load_tiktoken(path)
    meta = path.with_name(path.name + ".json")
    if meta.exists():
        info = json.loads(meta.read_text(encoding="utf-8"))
        return ranks, info["pattern"], {k: int(v) for k, v in info["special_tokens"].items()}
    return ranks, PRESETS["cl100k_base"].pattern, {}


def _tokenizer(ns: argparse.Namespace):
    from lmspec import backends

    ranks, pattern, specials = load_vocab(ns.vocab)
    backend = backends.load(ns.backend)
    if not backend.has("tokenizer"):
        raise CliError(f"--backend {ns.backend}: it does not implement tokenizer")
    return backend.fn("tokenizer")(ranks, pattern=pattern, special_tokens=specials)


# ----------------------------------------------------------------------------- commands


def cmd_train(ns: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from lmspec import reference as R
    from lmspec.backends.bpe_fast import train
    from lmspec.spec.tokenizer import PRESETS

    out = Path(ns.out)
    if out.suffix not in (".tiktoken", ".json"):
        raise CliError(f"--out: expected a .tiktoken or .json file name, got {ns.out!r}")
    if ns.corpus:
        paths = [p for c in ns.corpus for p in _expand(Path(c))]
        texts, where = read_corpus(paths, ns.max_bytes), f"{len(paths)} files"
    else:
        texts, where = stdlib_corpus(ns.max_bytes), "the Python standard library's sources"
    size = sum(len(t.encode("utf-8")) for t in texts)
    print(f"training byte-level BPE, vocab {ns.vocab_size}, on {size:,} bytes of {where}",
          file=sys.stderr)
    pattern = PRESETS[ns.pattern].pattern
    specials = tuple(ns.special or ("<|endoftext|>",))
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True),
                  disable=ns.quiet) as bar:
        task = bar.add_task("merges", total=ns.vocab_size - 256 - len(specials))
        model = train(texts, vocab_size=ns.vocab_size, pattern=pattern, special_tokens=specials,
                      progress=lambda done, total: bar.update(task, completed=done,
                                                              total=total))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        R.save_hf_json(model.ranks, out, pattern=pattern, special_tokens=model.special_tokens)
    else:
        R.save_tiktoken(model.ranks, out)
        meta = out.with_name(out.name + ".json")
        meta.write_text(json.dumps({"pattern": pattern,
                                    "special_tokens": model.special_tokens}, indent=1))
    print(f"{len(model.merges)} merges, {len(model.ranks) + len(specials)} ids -> {out}",
          file=sys.stderr)
    return 0


def _expand(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    if not path.exists():
        raise CliError(f"--corpus: no such file or folder {str(path)!r}")
    return [path]


def cmd_encode(ns: argparse.Namespace) -> int:
    text = ns.text if ns.text is not None else sys.stdin.read()
    tok = _tokenizer(ns)
    allowed = "all" if ns.allow_special else frozenset()
    print(" ".join(map(str, tok.encode(text, allowed_special=allowed))))
    return 0


def cmd_decode(ns: argparse.Namespace) -> int:
    raw = " ".join(ns.ids) if ns.ids else sys.stdin.read()
    try:
        ids = [int(x) for x in raw.replace(",", " ").split()]
    except ValueError:
        raise CliError(f"ids: expected integers separated by spaces or commas, got "
                       f"{raw.strip()[:60]!r}") from None
    sys.stdout.write(_tokenizer(ns).decode(ids) + ("" if ns.no_newline else "\n"))
    return 0


def add_parser(sub) -> None:
    """``lmspec tokenizer ...``: called by cli.build_parser."""
    p = sub.add_parser("tokenizer", help="train a BPE vocabulary, encode or decode text")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)

    sp = tsub.add_parser("train", help="train byte-level BPE (bpe_fast), with a progress bar")
    sp.add_argument("--vocab-size", type=int, default=4096)
    sp.add_argument("--corpus", action="append",
                    help="files or folders (repeatable); default: the stdlib's *.py sources")
    sp.add_argument("--max-bytes", type=int, default=1 << 20,
                    help="use at most this many bytes of the corpus (default 1 MiB)")
    sp.add_argument("--pattern", default="cl100k_base", choices=PRESET_NAMES,
                    help="pre-tokenization pattern of this preset")
    sp.add_argument("--special", action="append", help="special token (repeatable); default "
                                                       "<|endoftext|>")
    sp.add_argument("--out", default="tokenizer.tiktoken",
                    help="output: a .tiktoken rank file (+ .json sidecar) or tokenizer.json")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(fn=cmd_train)

    for name, fn, helptext in (("encode", cmd_encode, "print the ids of TEXT (or stdin)"),
                               ("decode", cmd_decode, "print the text of IDS (or stdin)")):
        sp = tsub.add_parser(name, help=helptext)
        sp.add_argument("--vocab", default="cl100k_base",
                        help=f"{'|'.join(PRESET_NAMES)}, a .tiktoken file or a tokenizer.json")
        sp.add_argument("--backend", default="bpe_fast",
                        help="a backend with a tokenizer (default bpe_fast)")
        if name == "encode":
            sp.add_argument("text", nargs="?", help="the text (default: read stdin)")
            sp.add_argument("--allow-special", action="store_true",
                            help="encode special-token text as special ids (default: refuse)")
        else:
            sp.add_argument("ids", nargs="*", help="token ids (default: read stdin)")
            sp.add_argument("-n", "--no-newline", action="store_true")
        sp.set_defaults(fn=fn)
