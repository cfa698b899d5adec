"""bpe_fast's compiled core (backends/bpe_fast/_core.c) against the reference's merge and against
bpe_fast's own Python path. Conformance runs bpe_fast with whichever core was built (the C one in
CI); these tests aim at the core itself: ties, long pieces past its stack buffers, vocabularies
that are not closed under merging, its arguments, and the Python path that serves where it was
not built."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmspec.backends.bpe_fast.tokenizer import FastTokenizer, _merge_long, _merge_short, tokenizer
from lmspec.reference.tokenizer import merge_parts
from lmspec.spec.tokenizer import NASTY_TEXTS

core = pytest.importorskip("lmspec.backends.bpe_fast._core",
                           reason="bpe_fast's compiled core was not built (no C compiler)")
SMALL = 64  # _core.c's stack buffers: pieces past it take the heap-allocated path
BYTES = {bytes([b]): b for b in range(256)}


# short pieces, where every merge touches an end, and long ones, past the stack buffers
pieces = st.one_of(*(st.lists(st.sampled_from(b"abc "), max_size=n).map(bytes)
                     for n in (6, 3 * SMALL)))


@st.composite
def cases(draw) -> tuple[dict[bytes, int], bytes]:
    """A piece over a few letters (so that merges tie and chain) and a vocabulary of its own
    substrings, on top of the single bytes. Closed: each token also has one split into two
    tokens, as a trainer makes them; else the substrings alone. Ranks in any order."""
    piece, closed = draw(pieces), draw(st.booleans())
    ranks = dict(BYTES)

    def add(token: bytes) -> None:
        if len(token) > 1 and token not in ranks:
            ranks[token] = len(ranks)
            if closed:
                k = draw(st.integers(1, len(token) - 1))
                add(token[:k])
                add(token[k:])

    for _ in range(draw(st.integers(0, 30)) if len(piece) > 1 else 0):
        i = draw(st.integers(0, len(piece) - 2))
        add(piece[i:draw(st.integers(i + 2, min(len(piece), i + 12)))])
    merged = [t for t in ranks if len(t) > 1]
    for t, k in zip(merged, draw(st.permutations(range(len(merged))))):
        ranks[t] = 256 + k
    return ranks, piece


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(case=cases())
def test_merge_equals_the_reference_and_the_python_path(case):
    ranks, piece = case
    merged = [ranks[p] for p in merge_parts(piece, ranks)]  # BPE, no whole-piece shortcut
    assert core.Encoder(ranks, 0).merge(piece) == merged, (piece, ranks)
    assert _merge_short(piece, ranks) == merged
    assert _merge_long(piece, ranks) == merged


def test_merge_of_equal_ranks_is_leftmost_and_chains_past_the_stack_buffers():
    ranks = dict(BYTES)
    ranks[b"aa"] = 256
    ranks[b"aaaa"] = 257
    enc = core.Encoder(ranks, 0)
    assert enc.merge(b"aaa") == [256, ord("a")]  # leftmost pair first, not the right one
    assert enc.merge(b"aaaaa") == [257, ord("a")]
    for n in (0, 1, SMALL - 1, SMALL, SMALL + 1, 4 * SMALL + 3, 100_000):
        assert enc.merge(b"a" * n) == [257] * (n // 4) + [256] * (n % 4 // 2) + [97] * (n % 2)


def test_encode_looks_up_whole_pieces_merges_the_rest_and_checks_the_tiling():
    ranks = dict(BYTES)
    ranks[b"ab"], ranks["é".encode()], ranks[b" x"] = 256, 257, 258
    enc = core.Encoder(ranks, 10)
    pieces = ["ab", "é", "abab", " x", "", "é!"]
    want = [256, 257, 256, 256, 258, 257, ord("!")]
    n = sum(map(len, pieces))
    assert enc.encode(pieces, n) == want
    assert enc.encode(pieces, n) == want  # from its cache now
    assert enc.encode(pieces, n + 1) is None  # the pieces do not tile a text of n + 1
    assert enc.encode([], 0) == []


def test_encode_takes_a_whole_piece_that_merging_cannot_reach():
    """tiktoken's shortcut: a piece that is a token is that token, even where BPE of its bytes
    cannot get there (no pair of 'abc' is a token)."""
    ranks = dict(BYTES) | {b"abc": 300}
    enc = core.Encoder(ranks, 4)
    assert enc.merge(b"abc") == [97, 98, 99]
    assert enc.encode(["abc", "xabc"], 7) == [300, 120, 97, 98, 99]


def test_encode_and_merge_reject_bad_input_by_name():
    enc = core.Encoder(dict(BYTES), 4)
    with pytest.raises(TypeError, match="pieces: expected str"):
        enc.encode(["a", b"b"], 2)

    class Piece(str):  # its __hash__ could free what encode borrows: refused outright
        def __hash__(self):
            return 1

    with pytest.raises(TypeError, match="not a subclass"):
        enc.encode([Piece("ab")], 2)
    with pytest.raises(TypeError):
        enc.encode(("a",), 1)  # a list, as findall returns
    with pytest.raises(TypeError, match="piece: expected bytes"):
        enc.merge("ab")
    with pytest.raises(UnicodeEncodeError):  # callers replace lone surrogates first
        enc.encode(["\ud800"], 1)
    with pytest.raises(ValueError, match="every single byte"):
        core.Encoder({b"a": 0}, 4)
    with pytest.raises(ValueError, match="non-empty bytes keys"):
        core.Encoder({"a": 0}, 4)
    with pytest.raises(ValueError, match="non-negative"):
        core.Encoder(dict(BYTES) | {b"ab": -1}, 4)
    with pytest.raises(OverflowError):
        core.Encoder(dict(BYTES) | {b"ab": 1 << 63}, 4)
    with pytest.raises(RuntimeError, match="not initialized"):
        core.Encoder.__new__(core.Encoder).merge(b"a")
    half = core.Encoder.__new__(core.Encoder)  # an __init__ that fails leaves nothing behind
    with pytest.raises(ValueError, match="every single byte"):
        half.__init__({b"a": 0}, 4)
    with pytest.raises(RuntimeError, match="not initialized"):
        half.merge(b"a")
    half.__init__(dict(BYTES), 4)
    assert half.merge(b"ab") == [97, 98]
    with pytest.raises(RuntimeError, match="already initialized"):
        half.__init__(dict(BYTES), 4)


def test_a_rank_past_int64_falls_back_to_the_python_path():  # whose rescan's sentinel is 2**62
    ranks = dict(BYTES) | {b"ab": 1 << 70}
    tok = tokenizer(ranks, pattern=r"\S+|\s+")
    assert tok.core == "python"
    assert tok.encode("abab c") == [1 << 70, 1 << 70, 32, 99]
    with pytest.raises(OverflowError):
        FastTokenizer(ranks, r"\S+|\s+", core="c")


def test_core_argument_and_environment_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="core: expected"):
        FastTokenizer(dict(BYTES), r"\S+", core="rust")
    monkeypatch.setenv("LMSPEC_BPE_FAST_CORE", "python")
    assert tokenizer(dict(BYTES), pattern=r"\S+").core == "python"
    assert FastTokenizer(dict(BYTES), r"\S+", core="c").core == "c"  # the argument wins
    monkeypatch.setenv("LMSPEC_BPE_FAST_CORE", "rust")
    with pytest.raises(ValueError, match="LMSPEC_BPE_FAST_CORE: expected"):
        tokenizer(dict(BYTES), pattern=r"\S+")


@pytest.fixture(scope="module")
def cl100k():
    from lmspec import reference as R

    try:
        return R.load_preset("cl100k_base")
    except ImportError as e:
        pytest.skip(str(e))


def test_c_and_python_paths_agree_on_cl100k(cl100k):
    ranks, pattern, specials = cl100k
    c = tokenizer(ranks, pattern=pattern, special_tokens=specials)
    py = FastTokenizer(ranks, pattern, specials, core="python")
    assert (c.core, py.core) == ("c", "python")
    long_word = "x" * 100_000  # one piece past every buffer; near-linear in the C heap too
    for text in (*NASTY_TEXTS, long_word, "".join(NASTY_TEXTS) * 3):
        assert c.encode_ordinary(text) == py.encode_ordinary(text), text[:40]


@settings(max_examples=100, derandomize=True, deadline=None, database=None)
@given(text=st.text(max_size=200))
def test_c_and_python_paths_agree_on_any_text(cl100k, text):
    ranks, pattern, specials = cl100k
    c = _cached(ranks, pattern, "c")
    py = _cached(ranks, pattern, "python")
    assert c.encode_ordinary(text) == py.encode_ordinary(text)


_tokenizers: dict[str, FastTokenizer] = {}


def _cached(ranks, pattern, which):
    if which not in _tokenizers:
        _tokenizers[which] = FastTokenizer(ranks, pattern, core=which)
    return _tokenizers[which]
