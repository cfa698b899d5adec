"""Conformance of tokenizer: equality with the reference on the gpt2, cl100k_base and o200k_base
vocabularies and on one trained here, round trip, piece independence, self-encoding, id range,
batch == single, determinism, special tokens, decoding of invalid UTF-8, error inputs.

Token ids are discrete: compared exactly. Dtype-free: run once per backend (dtype "-")."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from lmspec import reference as R
from lmspec.conformance import _check as check
from lmspec.conformance import _results
from lmspec.spec.tokenizer import COMPONENT, NASTY_TEXTS, PRESETS, texts

DTYPE_FREE = True
STEM = COMPONENT.stem
VOCABS = ("gpt2", "cl100k_base", "o200k_base", "trained")
# a corpus that needs no download, with every kind of nasty text in it
CORPUS = [*NASTY_TEXTS, "The quick brown fox jumps over the lazy dog. " * 3,
          "def tokenize(text):\n    return [t for t in text.split() if t]\n" * 2,
          "Les élèves n'ont pas fini ; 東京は晴れ。 12 + 345 = 357\r\n"]


@cache
def vocab(name: str) -> tuple[dict[bytes, int], str, dict[str, int]]:
    """(ranks, pattern, special_tokens), loaded once per session."""
    if name == "trained":
        model = R.bpe_train(CORPUS, vocab_size=420, pattern=PRESETS["cl100k_base"].pattern,
                            special_tokens=("<|endoftext|>", "<|pad|>"))
        return model.ranks, model.pattern, model.special_tokens
    try:
        return R.load_preset(name)
    except ImportError as e:
        pytest.skip(f"vocabulary {name} unavailable: {e}")


_built: dict[tuple, object] = {}


def build(target, name: str):
    """The backend's tokenizer for a vocabulary (built once per backend and vocabulary); a
    backend that cannot express it raises NotImplementedError: recorded, then skipped."""
    check.require_impl(target, STEM)
    key = (target.backend.name, name)
    if key not in _built:
        ranks, pattern, specials = vocab(name)
        try:
            _built[key] = target.backend.fn(STEM)(ranks, pattern=pattern,
                                                  special_tokens=specials)
        except NotImplementedError as e:
            _built[key] = e
    tok = _built[key]
    if isinstance(tok, NotImplementedError):
        _results.record_unsupported(STEM, target, "build", str(tok))
        pytest.skip(f"unsupported: {tok}")
    return tok


@cache
def ref(name: str):
    ranks, pattern, specials = vocab(name)
    return R.tokenizer(ranks, pattern=pattern, special_tokens=specials)


def call(target, fn, *args, **kwargs):
    """A backend call; NotImplementedError (a library that cannot express this call) is
    recorded as unsupported and the example passes without being counted."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as e:
        _results.record_unsupported(STEM, target, "call", str(e))
        pytest.skip(f"unsupported: {e}")


def explain(name: str, text: str, got: list[int], want: list[int]) -> str:
    k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    pieces = R.pretokenize(text, vocab(name)[1]) if text is not None else []
    r = ref(name)
    show = [r.decode_bytes([i]) for i in want[max(k - 2, 0):k + 3]]
    return (f"vocabulary {name}: text {text!r}\n  pieces (reference) {pieces[:12]}\n"
            f"  ids differ first at position {k}: got {got[k:k + 5]}, reference {want[k:k + 5]} "
            f"(reference tokens there {show})\n  got {len(got)} ids, reference {len(want)}")


def expect_same(target, name: str, text, got, want, what: str) -> None:
    _results.record_check(STEM, target, what, "ids", None)
    if got != want:
        pytest.fail(f"\nlmspec conformance failure: tokenizer {what} [{target.backend.name}]\n  "
                    + explain(name, text, list(got), list(want)), pytrace=False)


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", VOCABS)
def test_nasty_text(target, name):
    """Equal to the reference, and decoding gives the text back."""
    tok, r = build(target, name), ref(name)
    for text in [*NASTY_TEXTS, "".join(NASTY_TEXTS)]:
        ids = call(target, tok.encode_ordinary, text)
        expect_same(target, name, text, ids, r.encode_ordinary(text), "encode_ordinary")
        if call(target, tok.decode, ids) != text:
            pytest.fail(f"round trip [{name}]: {text!r} -> {ids} -> "
                        f"{call(target, tok.decode, ids)!r}", pytrace=False)
        expect_same(target, name, text,
                    call(target, tok.encode, text, allowed_special="all"),
                    r.encode(text, allowed_special="all"), "encode(allowed_special='all')")


# patterns with capture groups: a piece is the whole match, not its groups (re's findall gives
# the groups); both tile every text
GROUPED = (r"(\S+)|\s+", r"( ?)(\p{L}+)|\S|\s")


@pytest.mark.parametrize("pattern", GROUPED)
def test_pieces_are_whole_matches_whatever_the_groups(target, pattern):
    check.require_impl(target, STEM)
    ranks = vocab("trained")[0]
    tok = call(target, target.backend.fn(STEM), ranks, pattern=pattern)
    r = R.tokenizer(ranks, pattern=pattern)
    for text in [*CORPUS, "ab cd", " x  y"]:
        expect_same(target, "trained", None, call(target, tok.encode_ordinary, text),
                    r.encode_ordinary(text), f"encode_ordinary, pattern {pattern!r}")


@given(text=texts(), name=st.sampled_from(VOCABS))
def test_matches_reference_on_random_text(target, text, name):
    tok = build(target, name)
    expect_same(target, name, text, call(target, tok.encode_ordinary, text),
                ref(name).encode_ordinary(text), "encode_ordinary")


@pytest.mark.parametrize("name", ("cl100k_base", "trained"))
def test_long_piece_without_a_break(target, name):
    """5 000 letters in one piece: equal to the reference (the reference merges in
    near-linear time; the spec forbids quadratic work)."""
    tok = build(target, name)
    for text in ("a" * 5000, ("xq" * 5 + "z") * 450):
        expect_same(target, name, text[:40] + "...", call(target, tok.encode_ordinary, text),
                    ref(name).encode_ordinary(text), "long piece")


# ----------------------------------------------------------------------------- properties


@given(text=texts(), name=st.sampled_from(VOCABS))
def test_round_trip(target, text, name):
    """decode(encode(text)) == text for every valid Unicode string (so the pieces tile it)."""
    tok = build(target, name)
    ids = call(target, tok.encode_ordinary, text)
    _results.record_check(STEM, target, "round_trip", "text", None)
    got = call(target, tok.decode_bytes, ids)
    if got != text.encode("utf-8") or call(target, tok.decode, ids) != text:
        pytest.fail(f"round trip [{name}]: {text!r} -> {ids} -> {got!r}", pytrace=False)


@given(text=texts(), name=st.sampled_from(VOCABS))
def test_encoding_is_the_concatenation_of_the_pieces(target, text, name):
    """Each piece is encoded on its own (where a piece pre-tokenizes to itself)."""
    pattern = vocab(name)[1]
    pieces = R.pretokenize(text, pattern)
    assume(all(R.pretokenize(p, pattern) == [p] for p in pieces))
    tok = build(target, name)
    joined = [i for p in pieces for i in call(target, tok.encode_ordinary, p)]
    expect_same(target, name, text, call(target, tok.encode_ordinary, text), joined,
                "pieces_independent")


@pytest.mark.parametrize("name", VOCABS)
def test_every_token_encodes_to_itself(target, name):
    """A token whose bytes are valid UTF-8 forming one piece encodes to that one token (all
    tokens of the trained vocabulary, a fixed sample of 400 of each preset)."""
    tok = build(target, name)
    ranks, pattern, _ = vocab(name)
    items = sorted(ranks.items(), key=lambda kv: kv[1])
    if name != "trained":
        items = items[::max(len(items) // 400, 1)]
    for tok_bytes, rank in items:
        try:
            text = tok_bytes.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if R.pretokenize(text, pattern) != [text]:
            continue
        expect_same(target, name, text, call(target, tok.encode_ordinary, text), [rank],
                    "self_encoding")


@given(text=texts(), name=st.sampled_from(VOCABS))
def test_ids_are_within_the_vocabulary(target, text, name):
    tok = build(target, name)
    assert tok.n_vocab == ref(name).n_vocab, f"n_vocab {tok.n_vocab}, spec {ref(name).n_vocab}"
    ids = call(target, tok.encode, text, allowed_special="all")
    _results.record_check(STEM, target, "ids_in_range", "ids", None)
    assert all(0 <= i < tok.n_vocab for i in ids), f"{text!r} -> {ids}"


@given(batch=st.lists(texts(12), max_size=4), name=st.sampled_from(VOCABS))
def test_batch_equals_single(target, batch, name):
    tok = build(target, name)
    got = call(target, tok.encode_batch, batch, allowed_special="all")
    want = [call(target, tok.encode, t, allowed_special="all") for t in batch]
    _results.record_check(STEM, target, "batch", "ids", None)
    assert list(map(list, got)) == want, f"encode_batch differs from encode on {batch!r}"


@given(text=texts(), name=st.sampled_from(("cl100k_base", "trained")))
def test_deterministic(target, text, name):
    """The same ids twice from one object, and from a fresh object built from the same
    vocabulary (a cache must never change an answer)."""
    tok = build(target, name)
    first = call(target, tok.encode_ordinary, text)
    again = call(target, tok.encode_ordinary, text)
    key = ("fresh", target.backend.name, name)
    if key not in _built:  # a second object, built once
        ranks, pattern, specials = vocab(name)
        _built[key] = call(target, target.backend.fn(STEM), ranks, pattern=pattern,
                           special_tokens=specials)
    fresh = _built[key]
    _results.record_check(STEM, target, "deterministic", "ids", None)
    assert first == again == call(target, fresh.encode_ordinary, text), text


def test_lone_surrogates_become_replacement_characters(target):
    """Not valid Unicode: surrogate pairs joined, lone surrogates -> U+FFFD (tiktoken)."""
    tok, r = build(target, "cl100k_base"), ref("cl100k_base")
    for text in ("a\ud800b", "\udfff", "\ud83d\ude00 x", "x\ud83d"):
        expect_same(target, "cl100k_base", None, call(target, tok.encode_ordinary, text),
                    r.encode_ordinary(text), "surrogates")


# ----------------------------------------------------------------------------- special tokens


@pytest.mark.parametrize("name", ("cl100k_base", "trained"))
def test_special_tokens(target, name):
    """Disallowed special text raises (the default: every special); allowed ones become their
    id; specials neither allowed nor disallowed are plain text; encode_ordinary ignores them."""
    tok, r = build(target, name), ref(name)
    specials = sorted(vocab(name)[2])
    a, b = specials[0], specials[1]
    text = f"x{a} y{b}{a}z"
    with pytest.raises(ValueError):
        call(target, tok.encode, text)
    with pytest.raises(ValueError):
        call(target, tok.encode, text, allowed_special={a})  # b still disallowed
    cases = [
        ("plain", dict(disallowed_special=()), r.encode_ordinary(text)),
        ("all", dict(allowed_special="all"), r.encode(text, allowed_special="all")),
        ("only a", dict(allowed_special={a}, disallowed_special=()),
         r.encode(text, allowed_special={a}, disallowed_special=())),
    ]
    for what, kwargs, want in cases:
        expect_same(target, name, text, call(target, tok.encode, text, **kwargs), want,
                    f"special tokens ({what})")
    ids = vocab(name)[2]
    assert r.encode(text, allowed_special="all").count(ids[a]) == 2
    expect_same(target, name, text, call(target, tok.encode_ordinary, text),
                r.encode_ordinary(text), "encode_ordinary with special text")
    assert call(target, tok.decode, [ids[a], ids[b]]) == a + b


# ----------------------------------------------------------------------------- decoding


def test_decode_replaces_invalid_and_partial_utf8(target):
    """Every maximal invalid subpart, an incomplete tail included, becomes one U+FFFD."""
    tok, r = build(target, "cl100k_base"), ref("cl100k_base")
    ranks = vocab("cl100k_base")[0]
    byte = {b: ranks[bytes([b])] for b in range(256)}
    euro = [byte[0xE2], byte[0x82], byte[0xAC]]
    cases = [euro, euro[:2], [byte[0x61]] + euro[:2], euro[:1] + [byte[0x61]],
             [byte[0xFF], byte[0x61]], [byte[0xF0], byte[0x9F], byte[0x98]], []]
    for ids in cases:
        _results.record_check(STEM, target, "decode", "text", None)
        for errors in ("replace", "ignore"):
            got, want = call(target, tok.decode, ids, errors=errors), r.decode(ids, errors)
            assert got == want, f"decode({ids}, errors={errors!r}) = {got!r}, spec {want!r}"


# ----------------------------------------------------------------------------- errors


def test_errors(target):
    """COMPONENT.errors: construction errors, then per-call errors on a valid tokenizer."""

    def call(params):
        tok = target.backend.fn(STEM)(**params["construct"])
        if params["call"] is not None:
            method, args, kwargs = params["call"]
            getattr(tok, method)(*args, **kwargs)

    check.check_errors(target, STEM, call)
