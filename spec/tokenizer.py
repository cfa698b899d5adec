"""Byte-level BPE encoding and decoding, as tiktoken defines it (GPT-2, cl100k_base, o200k_base).

A vocabulary is tiktoken's "mergeable ranks" (token bytes -> rank, the rank being the id), a
pre-tokenization regex and special tokens. Sennrich et al. (2016) for BPE; Radford et al.
(2019) for its byte-level form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Literal, Protocol

from hypothesis import strategies as st

from lmspec.spec._contract import Case, Component, ErrorCase, require

SpecialSet = AbstractSet[str] | Literal["all"]


class Tokenizer(Protocol):
    """What ``tokenizer(...)`` returns (the backend protocol of a dtype-free stem)."""

    n_vocab: int
    special_tokens: Mapping[str, int]

    def encode(self, text: str, *, allowed_special: SpecialSet = frozenset(),
               disallowed_special: SpecialSet = "all") -> list[int]: ...

    def encode_ordinary(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str], *, allowed_special: SpecialSet = frozenset(),
                     disallowed_special: SpecialSet = "all") -> list[list[int]]: ...

    def decode_bytes(self, ids: Sequence[int]) -> bytes: ...

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str: ...


def tokenizer(ranks: Mapping[bytes, int], *, pattern: str,
              special_tokens: Mapping[str, int] | None = None) -> Tokenizer:
    """An encoder/decoder for a byte-level BPE vocabulary, with tiktoken's semantics.

    Vocabulary: ``ranks`` maps token bytes to rank; the rank *is* the token id. Every single
    byte 0..255 must be a token (byte-level: any text is encodable). Ranks are distinct,
    non-negative ints; gaps are allowed. ``special_tokens`` maps text to an id that no
    mergeable token has. ``n_vocab`` = the largest id + 1.

    Encoding ``encode_ordinary(text)``:

    1. Surrogates (a str that is not valid Unicode) are fixed first exactly as tiktoken does:
       ``text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")``: a surrogate
       pair given as two code units becomes its code point, a lone surrogate becomes U+FFFD.
       So the round trip holds for every valid Unicode string, and for no other.
    2. Pre-tokenization: the pieces are the non-empty matches of ``pattern`` (the ``regex``
       module's syntax, as tiktoken's ``pat_str``: ``\\p{..}`` classes, possessive
       quantifiers; ``\\s`` is ``\\p{White_Space}`` there as in Rust's regex), found left to
       right without overlap (``regex.finditer``). Empty matches produce no piece. The pieces
       must tile the text: a pattern that leaves any character unmatched is a ValueError
       naming ``text`` (tiktoken silently drops such characters; the spec refuses to lose
       text). The presets' patterns match every string.
    3. Each piece's UTF-8 bytes are encoded on their own: if the whole piece is a token, its
       id (tiktoken's shortcut); else start from single bytes and repeatedly join the adjacent
       pair whose concatenation has the lowest rank, the leftmost such pair on equal rank,
       until no adjacent concatenation is a token. The ids of the parts, in order.
    4. ``encode`` output = the concatenation over pieces. A piece's encoding depends on that
       piece alone (hence ``encode(a + b) == encode(a) + encode(b)`` whenever the
       pre-tokenization of a + b splits at the boundary).

    The work is near-linear in the piece length (a heap of candidate pairs): a 100 000
    character piece without a break must not take quadratic time.

    Special tokens, ``encode(text, allowed_special, disallowed_special)`` (tiktoken's rules):
    ``"all"`` means every special token; ``disallowed_special="all"`` means every special not
    allowed. If the text contains (anywhere) the text of a disallowed special, ValueError
    naming it. Otherwise occurrences of allowed specials (leftmost first, the longest at one
    position) become their id and the text between them is encoded ordinarily; specials that
    are neither allowed nor disallowed are plain text. ``encode_ordinary`` treats every
    special as plain text. ``encode_batch`` equals ``encode`` on each text.

    Decoding: ``decode_bytes(ids)`` concatenates the tokens' bytes (a special decodes to its
    UTF-8 text); an id that is no token (negative, a gap, >= n_vocab, not an integer) is a
    ValueError naming ``ids``. ``decode(ids, errors="replace")`` =
    ``decode_bytes(ids).decode("utf-8", errors)``: with "replace", every maximal invalid
    subpart (Unicode's recommended practice, which Python implements), including an
    incomplete sequence at the end, becomes one U+FFFD. The reference's ``StreamDecoder``
    holds back an incomplete UTF-8 tail between calls: the concatenation of its outputs and
    its final flush equals ``decode`` of all ids.

    Self-encoding: for the gpt2, cl100k_base and o200k_base vocabularies, every token's own
    bytes encode (step 3 without the shortcut) to that one token (checked on all of their
    tokens once; the reference tests check a sample). For vocabularies trained by
    ``bpe_train`` it held on every corpus tried (the tests check theirs); it is not
    guaranteed for arbitrary rank tables.

    Rejected: ``ranks`` not a mapping of bytes to distinct non-negative ints, or missing a
    single byte (ValueError naming ``ranks``); a ``pattern`` that is not a str or does not
    compile (ValueError naming ``pattern``); a special token that is empty, not a str, or
    whose id is negative, repeated or a mergeable token's id (ValueError naming
    ``special_tokens``). At call time: ``text`` not a str (TypeError naming ``text``), an
    unknown name in ``allowed_special``/``disallowed_special`` (ValueError naming it).
    """
    check_args(ranks, pattern=pattern, special_tokens=special_tokens)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def check_args(ranks: Mapping[bytes, int], *, pattern: str,
               special_tokens: Mapping[str, int] | None = None) -> None:
    """The constructor's checks (O(len(ranks))); every implementation calls it."""
    import regex

    require(isinstance(ranks, Mapping), ValueError,
            f"ranks: expected a mapping of bytes to int, got {type(ranks).__name__}")
    ids = set()
    for tok, rank in ranks.items():
        require(isinstance(tok, bytes) and len(tok) > 0, ValueError,
                f"ranks: expected non-empty bytes keys, got {tok!r}")
        require(isinstance(rank, int) and not isinstance(rank, bool) and rank >= 0, ValueError,
                f"ranks: expected non-negative int ranks, got {rank!r} for {tok!r}")
        ids.add(rank)
    require(len(ids) == len(ranks), ValueError, "ranks: two tokens share a rank")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    require(not missing, ValueError,
            f"ranks: every single byte must be a token; missing {len(missing)}, "
            f"first {bytes(missing[:1])!r}")
    require(isinstance(pattern, str), ValueError,
            f"pattern: expected a regex string, got {type(pattern).__name__}")
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise ValueError(f"pattern: does not compile ({e})") from None
    seen = set()
    for text, sid in (special_tokens or {}).items():
        require(isinstance(text, str) and text != "", ValueError,
                f"special_tokens: expected non-empty str keys, got {text!r}")
        require(isinstance(sid, int) and not isinstance(sid, bool) and sid >= 0, ValueError,
                f"special_tokens: expected a non-negative int id for {text!r}, got {sid!r}")
        require(sid not in ids and sid not in seen, ValueError,
                f"special_tokens: id {sid} of {text!r} is already taken")
        seen.add(sid)


def check_encode_args(text: str, special_tokens: Mapping[str, int],
                      allowed_special: SpecialSet = frozenset(),
                      disallowed_special: SpecialSet = "all") -> tuple[frozenset, frozenset]:
    """Checks of an encode call -> (allowed, disallowed) as sets of special-token texts."""
    require(isinstance(text, str), TypeError, f"text: expected str, got {type(text).__name__}")
    known = frozenset(special_tokens)
    sets = {}
    for name, value in (("allowed_special", allowed_special),
                        ("disallowed_special", disallowed_special)):
        if value == "all":
            sets[name] = None
            continue
        require(not isinstance(value, str), ValueError,
                f"{name}: expected 'all' or a set of special-token texts, got {value!r}")
        unknown = sorted(set(value) - known)
        require(not unknown, ValueError, f"{name}: unknown special tokens {unknown}")
        sets[name] = frozenset(value)
    allowed = known if sets["allowed_special"] is None else sets["allowed_special"]
    disallowed = (known - allowed if sets["disallowed_special"] is None
                  else sets["disallowed_special"])
    return allowed, disallowed


def check_ids(ids: Sequence[int]) -> None:
    """The decode-time check of the id sequence's type (membership is checked per id)."""
    require(not isinstance(ids, (str, bytes, Mapping)), ValueError,
            f"ids: expected a sequence of ints, got {type(ids).__name__}")


# ----------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """A named vocabulary: its pattern and special tokens (the ranks ship in PyPI packages;
    ``lmspec.reference.load_preset`` reads them)."""

    name: str
    pattern: str
    special_tokens: Mapping[str, int] = field(default_factory=dict)
    n_vocab: int = 0


# tiktoken_ext/openai_public.py (tiktoken 0.14), verbatim
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])

PRESETS: dict[str, Preset] = {
    "gpt2": Preset("gpt2", GPT2_PATTERN, {"<|endoftext|>": 50256}, 50257),
    "cl100k_base": Preset("cl100k_base", CL100K_PATTERN, {
        "<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276}, 100277),
    "o200k_base": Preset("o200k_base", O200K_PATTERN,
                         {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}, 200019),
}


# ----------------------------------------------------------------------------- domain

# Text a reviewer tries first: whitespace runs, CRLF, contractions in any case, digit runs,
# CJK, emoji ZWJ sequences, combining marks, special-token text, control characters.
NASTY_TEXTS = (
    "", " ", "  ", "\n", "\r\n", "\r\n\r\n", "a\r\nb", " \t \n  \n", "hello world",
    "Hello  world   ", "   leading", "trailing   ", "x\n\n\n  y", "\t\tindent\n\t",
    "I'm you're he'll we've they'd it's", "I'M YOU'RE HE'LL WE'VE", "It'S DoN'T ſ'S",
    "don't'''s '", "12345678901234567890", "3.14159 1,000,000 007", "a1b22c333d4444",
    "٣٤٥ ٦٧٨", "Ⅷ ½ ²³", "日本語のテキスト、中文文本。", "한국어 텍스트", "Ελληνικά ΚΕΊΜΕΝΟ",
    "👨‍👩‍👧‍👦 family 🏳️‍🌈 flag", "👍🏽👍🏿", "e\u0301 a\u0300\u0316 \u0301",
    "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇", "<|endoftext|>", "a<|endoftext|>b<|fim_prefix|>",
    "<|endofprompt|><|endofprompt|>", "<|endoftext", "\x00\x01\x1c\x1f\x7f", "\u00a0\u2003\u3000x",
    "\u200b\u200d\ufeff", "def f(x):\n    return x**2  # ok\n", "https://example.com/a/b?c=d",
    "a/b//c\r\n/", "ＡＢＣ１２３", "\U0001f600\U0001f600\U0001f600", "aaaaaaaaaaaaaaaaaaaa",
    "    \n    \n", "\u2028\u2029\x85",
)


def texts(max_size: int = 40) -> st.SearchStrategy[str]:
    """Valid Unicode text (no surrogates): arbitrary characters mixed with nasty fragments."""
    chars = st.characters(blacklist_categories=("Cs",))
    fragment = st.one_of(st.text(chars, max_size=8), st.sampled_from(NASTY_TEXTS),
                         st.sampled_from((" ", "  ", "\n", "\r\n", "'s", "'LL", "123", "é")))
    return st.lists(fragment, max_size=6).map("".join).filter(lambda t: len(t) <= 4 * max_size)


def cases() -> st.SearchStrategy[Case]:
    return st.builds(lambda t: Case({}, {"text": t}), texts())


def _small_ranks() -> dict[bytes, int]:
    ranks = {bytes([b]): b for b in range(256)}
    ranks[b"ab"] = 256
    return ranks


def _build(call: tuple | None = None, **kwargs):
    """An error case: ``params["construct"]`` are tokenizer()'s arguments; ``params["call"]``,
    when given, a (method, args, kwargs) to call on the result, which must raise."""
    def build():
        construct = {"ranks": _small_ranks(), "pattern": r"\S+|\s+", "special_tokens": {
            "<|end|>": 300}}
        construct.update(kwargs)
        return {}, {"construct": construct, "call": call}
    return build


def _missing_byte() -> dict[bytes, int]:
    ranks = _small_ranks()
    del ranks[b"\xff"]
    return ranks


COMPONENT = Component(
    stem="tokenizer",
    inputs=(),
    outputs=("ids",),
    cases=cases,
    errors=(
        ErrorCase("a single byte missing", _build(ranks=_missing_byte()), ValueError, r"ranks"),
        ErrorCase("two tokens share a rank", _build(ranks={**_small_ranks(), b"ba": 256}),
                  ValueError, r"ranks"),
        ErrorCase("pattern does not compile", _build(pattern="(?<"), ValueError, r"pattern"),
        ErrorCase("special id taken", _build(special_tokens={"<|x|>": 256}), ValueError,
                  r"special_tokens"),
        ErrorCase("text not a str", _build(("encode", (b"abc",), {})), TypeError, r"text"),
        ErrorCase("disallowed special text", _build(("encode", ("a<|end|>",), {})),
                  ValueError, r"<\|end\|>"),
        ErrorCase("unknown allowed special", _build(("encode", ("a",), {
            "allowed_special": {"<|nope|>"}})), ValueError, r"allowed_special"),
        ErrorCase("id not in the vocabulary", _build(("decode_bytes", ([97, 299],), {})),
                  ValueError, r"ids"),
        ErrorCase("negative id", _build(("decode", ([-1],), {})), ValueError, r"ids"),
    ),
    summary="byte-level BPE encode/decode with tiktoken semantics; gpt2, cl100k, o200k presets",
)
