"""The tokenizer libraries' known disagreements with the spec, each pinned by a minimal example on
a tiny vocabulary (so the report's explanations stay true: if a library changes, this fails),
and the adapters' choice of a library's special-token mode."""

from __future__ import annotations

import pytest

from lmspec import reference as R
from lmspec.backends import _tokenizer_peers as peers
from lmspec.spec.tokenizer import CL100K_PATTERN

BYTES = {bytes([b]): b for b in range(256)}
# "1234": the spec's pieces are "123" + "4" (possessive \p{N}{1,3}+); BPE of the whole run
# merges "34" first (rank 256) and ends in "12" + "34"
DIGITS = {**BYTES, b"34": 256, b"12": 257, b"123": 258}
SPECIALS = {"<|end|>": 300}  # id 259..299 unused: a gap


def _build(backend: str, ranks=DIGITS, specials=SPECIALS, pattern=CL100K_PATTERN):
    module = pytest.importorskip(f"lmspec.backends.{backend}")
    return module.tokenizer(ranks, pattern=pattern, special_tokens=specials)


def test_spec_on_the_tiny_vocabulary():
    ref = R.tokenizer(DIGITS, pattern=CL100K_PATTERN, special_tokens=SPECIALS)
    assert ref.encode_ordinary("x 1234") == [120, 32, 258, 52]
    assert ref.encode("<|end|>", allowed_special="all") == [300]


def test_hf_reads_the_possessive_digit_quantifier_as_a_repeated_group():
    tok = _build("hf_tokenizers_peer")
    assert tok.encode_ordinary("x 1234") == [120, 32, 257, 256]  # "12" "34", one piece
    assert _build("tiktoken_peer").encode_ordinary("x 1234") == [120, 32, 258, 52]
    assert _build("fastokens_peer").encode_ordinary("x 1234") == [120, 32, 258, 52]


def test_hf_renumbers_a_special_token_after_an_id_gap():
    assert _build("hf_tokenizers_peer").encode("<|end|>", allowed_special="all") == [259]
    assert _build("fastokens_peer").encode("<|end|>", allowed_special="all") == [300]
    assert _build("tiktoken_peer").encode("<|end|>", allowed_special="all") == [300]


@pytest.mark.parametrize("backend, error", [("hf_tokenizers_peer", TypeError),
                                            ("fastokens_peer", UnicodeEncodeError)])
def test_rust_bindings_refuse_lone_surrogates(backend, error):
    with pytest.raises(error):
        _build(backend).encode_ordinary("a\ud800b")
    assert _build("tiktoken_peer").encode_ordinary("a\ud800b") == [97, 239, 191, 189, 98]


def test_oniguruma_cannot_compile_inline_dotall_so_hf_reports_not_implemented():
    with pytest.raises(NotImplementedError, match="cannot compile pattern"):
        _build("hf_tokenizers_peer", pattern=r"(?s).+")
    assert _build("fastokens_peer", pattern=r"(?s).+").encode_ordinary("a\nb") == [97, 10, 98]


def test_special_mode_is_one_switch_per_call():
    specials = {"<|a|>": 300, "<|b|>": 301}
    assert peers.special_mode("x", specials, frozenset(), "all") is None
    assert peers.special_mode("<|a|>", specials, "all", "all") is True
    assert peers.special_mode("<|a|>", specials, frozenset(), frozenset()) is False
    with pytest.raises(ValueError, match="disallowed special token '<\\|b\\|>'"):
        peers.special_mode("<|a|><|b|>", specials, {"<|a|>"}, "all")
    with pytest.raises(NotImplementedError, match="cannot encode"):
        peers.special_mode("<|a|><|b|>", specials, {"<|a|>"}, frozenset())
    assert peers.batch_mode([None, True, None]) is True
    with pytest.raises(NotImplementedError):
        peers.batch_mode([True, False])


def test_library_decodes_bytes_through_the_byte_level_alphabet():
    tok = _build("hf_tokenizers_peer")
    # the special's id 300 is no token to HF (renumbered 259): dropped, as its decode drops it
    assert tok.decode_bytes([258, 32, 300, 0xE2]) == b"123 \xe2"
    assert tok.decode([258, 32, 300]) == "123 "
    assert _build("fastokens_peer").decode_bytes([258, 300]) == b"123<|end|>"
    assert tok.decode([0xE2, 97]) == "\ufffda"
    with pytest.raises(ValueError, match="ids"):
        tok.decode([280])  # in the gap: no token


def test_fastokens_refuses_ids_with_gaps_as_not_implemented():
    gap = {**BYTES, b"ab": 300}
    with pytest.raises(NotImplementedError, match="gaps"):
        _build("fastokens_peer", ranks=gap, specials={})
    assert _build("hf_tokenizers_peer", ranks=gap, specials={}).encode_ordinary("abab") == [
        300, 300]


def test_hf_trainer_makes_one_merge_more_for_a_special_spelled_in_stand_in_characters():
    """The second half of the deviation of hf_tokenizers_peer's bpe_train
    special_tokens_never_merge (spec/_deviations.py): 'Ġa' is how GPT-2's byte-level stand-ins
    spell the merge ' a', so HF counts the special and that merge as one id."""
    module = pytest.importorskip("lmspec.backends.hf_tokenizers_peer")
    from lmspec.spec.tokenizer import PRESETS

    text, gpt2 = [" aa aa aa ab ab ba ba bb bb bb"], PRESETS["gpt2"].pattern

    def n_ids(train, special):
        model = train(text, vocab_size=260, pattern=gpt2, special_tokens=[special])
        return len(set(model.ranks.values()) | set(model.special_tokens.values()))

    assert n_ids(R.bpe_train, "\u0120a") == 260
    assert n_ids(module.bpe_train, "\u0120a") == 261
    assert n_ids(module.bpe_train, "<|e|>") == 260  # a special in plain characters: as asked
