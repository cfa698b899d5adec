"""HF ``tokenizers``' BpeTrainer as a ``bpe_train`` backend: byte-level BPE trained on the spec's
pre-tokenization, its merges read back in order and numbered by the spec's id policy."""

from __future__ import annotations

import json
from collections.abc import Sequence

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

from lmspec.backends._tokenizer_peers import library_regex, token_bytes
from lmspec.spec.bpe_train import BPEModel, check_args


def bpe_train(texts: Sequence[str], *, vocab_size: int, pattern: str,
              special_tokens: Sequence[str] = ()) -> BPEModel:
    """HF's trainer on Split(pattern, isolated) + ByteLevel (no regex of its own), with all 256
    bytes as the initial alphabet and no minimum frequency. Its merges are taken as they come
    (its counts and its tie-break); only the numbering is the spec's (byte b -> b, each new
    token the next id, specials last): HF itself numbers
    specials first, then its alphabet in character order."""
    check_args(texts, vocab_size=vocab_size, pattern=pattern, special_tokens=special_tokens)
    tok = Tokenizer(models.BPE())
    split = library_regex(lambda: pre_tokenizers.Split(Regex(pattern), "isolated"), pattern)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  min_frequency=0, show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    hf_merges = json.loads(tok.to_str())["model"]["merges"]
    ranks = {bytes([b]): b for b in range(256)}
    merges = []
    for m in hf_merges:
        a, b = m.split(" ") if isinstance(m, str) else m
        left, right = token_bytes(a, False), token_bytes(b, False)
        merges.append((left, right))
        ranks.setdefault(left + right, len(ranks))
    specials = {s: len(ranks) + k for k, s in enumerate(special_tokens)}
    return BPEModel(ranks=ranks, merges=merges, special_tokens=specials, pattern=pattern)
