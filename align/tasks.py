"""Synthetic tasks with verifiable answers, the chat template, and the rows SFT trains on.

A task draws ``Example(prompt, answer)`` pairs from a seed; its answers are checked by code,
so the reward of a completion needs no model (GRPO's verifiable reward) and a wrong answer
is easy to make (DPO's rejected side). The chat template wraps a prompt as

    <|user|>{prompt}<|assistant|>{answer}<EOS>

where the role markers are plain text (the byte-level vocabulary of ``lmspec train`` has no
special tokens but EOS) and EOS ends the answer. The prompt and the answer are encoded
separately (``encode_example``), so the answer's first token never merges with the
template's last, and the boundary the loss mask needs is exact."""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmspec.spec.cross_entropy import IGNORE_INDEX

USER, ASSISTANT = "<|user|>", "<|assistant|>"


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


def render(prompt: str) -> str:
    """The chat template's text up to where the assistant's answer starts."""
    return f"{USER}{prompt}{ASSISTANT}"


def _reverse(rng: np.random.Generator) -> Example:
    letters = string.ascii_lowercase[:8]
    word = "".join(rng.choice(list(letters), int(rng.integers(3, 6))))
    return Example(f"reverse {word}", word[::-1])


def _add(rng: np.random.Generator) -> Example:
    a, b = (int(x) for x in rng.integers(0, 50, 2))
    return Example(f"{a}+{b}=", str(a + b))


TASKS = {"reverse": _reverse, "add": _add}


def examples(task: str, n: int, seed: int | Sequence[int]) -> list[Example]:
    """``n`` examples of ``task``, the same for the same seed (an integer or a sequence of
    them, as NumPy's ``default_rng`` takes)."""
    if task not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {task!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected an integer >= 0, got {n!r}")
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), 0x7A5C])
    return [TASKS[task](rng) for _ in range(n)]


def reward(completion: str, answer: str) -> float:
    """The verifiable reward in [0, 1]: the fraction of the answer's characters the
    completion has in place, over the longer of the two, so 1.0 exactly when the completion
    is the answer (surrounding whitespace ignored) and a partial answer earns partial credit
    (a tiny model's groups would otherwise often all score 0, and a group of equal rewards
    has no GRPO advantage)."""
    c, a = completion.strip(), answer.strip()
    if not c and not a:
        return 1.0
    hits = sum(x == y for x, y in zip(c, a))
    return hits / max(len(c), len(a))


def corrupt(answer: str, rng: np.random.Generator) -> str:
    """A wrong answer near the right one (DPO's rejected side): one character replaced by
    another of the answer's alphabet, or two swapped."""
    alphabet = string.digits if answer.isdigit() else string.ascii_lowercase[:8]
    chars = list(answer)
    i = int(rng.integers(len(chars)))
    if len(chars) > 1 and rng.random() < 0.5:
        j = (i + 1 + int(rng.integers(len(chars) - 1))) % len(chars)
        if chars[i] != chars[j]:
            chars[i], chars[j] = chars[j], chars[i]
            return "".join(chars)
    chars[i] = rng.choice([x for x in alphabet if x != chars[i]])
    return "".join(chars)


# ----------------------------------------------------------------------------- encoding


def encode_example(tok, prompt: str, answer: str | None, eos_id: int
                   ) -> tuple[list[int], list[int]]:
    """(prompt ids under the template, answer ids + EOS); answer None gives no answer ids."""
    p = tok.encode_ordinary(render(prompt))
    return p, ([] if answer is None else [*tok.encode_ordinary(answer), eos_id])


def sft_rows(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], seq_len: int, eos_id: int,
             *, pack: bool = True) -> dict[str, np.ndarray]:
    """Rows of ``model_loss``'s inputs for prompt-masked cross-entropy: each conversation is
    its prompt ids then its answer ids (EOS last); token i's target is token i + 1 where that
    token belongs to the answer, else IGNORE_INDEX (the prompt and the template teach
    nothing: only the answer is the model's to say).

    ``pack``: conversations laid greedily, in order, into rows of ``seq_len`` with one
    segment id each (positions restart per segment; no target crosses a conversation), the
    rest of a row padded with EOS, segment id -1 and ignored targets. Without it, one
    conversation per row. Either way the sum of the per-target losses is the same (the
    packed-equals-unpacked property the tests check). A conversation longer than seq_len is
    refused, never cut (its answer would lose its end)."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len: expected an integer >= 2, got {seq_len!r}")
    rows: list[list[tuple[Sequence[int], Sequence[int]]]] = []
    used = seq_len  # forces a first row
    for i, (p, a) in enumerate(pairs):
        n = len(p) + len(a)
        if n > seq_len:
            raise ValueError(f"seq_len: conversation {i} has {n} tokens, more than {seq_len}")
        if not a:
            raise ValueError(f"pairs: conversation {i} has no answer ids")
        if not pack or used + n > seq_len:
            rows.append([])
            used = 0
        rows[-1].append((p, a))
        used += n
    shape = (len(rows), seq_len)
    tokens = np.full(shape, eos_id, np.int32)
    targets = np.full(shape, IGNORE_INDEX, np.int32)
    seg = np.full(shape, -1, np.int32)
    for r, convs in enumerate(rows):
        at = 0
        for s, (p, a) in enumerate(convs):
            ids = [*p, *a]
            tokens[r, at:at + len(ids)] = ids
            seg[r, at:at + len(ids)] = s
            targets[r, at + len(p) - 1:at + len(ids) - 1] = a  # position j predicts j + 1
            at += len(ids)
    return {"tokens": tokens, "targets": targets, "segment_ids": seg}


def completion_rows(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                    pad_id: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One row per (prompt, completion), padded at the end to the longest: ``tokens`` and
    ``targets`` (the completion's tokens as the targets of the positions before them, the
    rest ignored), and the (B, T) 0/1 ``mask`` of those targets (what the alignment losses
    sum over). Row r's completion targets start at position ``len(prompts[r]) - 1``."""
    if len(prompts) != len(completions):
        raise ValueError(f"completions: expected {len(prompts)} (one per prompt), "
                         f"got {len(completions)}")
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompts: prompt {i} is empty (a completion needs a context)")
    t = max(len(p) + len(c) for p, c in zip(prompts, completions))
    b = len(prompts)
    tokens = np.full((b, t), pad_id, np.int32)
    targets = np.full((b, t), IGNORE_INDEX, np.int32)
    for r, (p, c) in enumerate(zip(prompts, completions)):
        ids = [*p, *c]
        tokens[r, :len(ids)] = ids
        targets[r, len(p) - 1:len(ids) - 1] = c
    return {"tokens": tokens, "targets": targets}, (targets != IGNORE_INDEX).astype(np.int32)
