"""Test-time compute (serve/search.py): beam search equals greedy decoding at width 1 and an
exhaustive enumeration at full width (the float64 reference model), re-scores to a full
forward, shares the prompt's blocks by copy-on-write and gives every block back (the block
manager's invariants checked after every step); best-of-N's sample i does not depend on n;
the majority vote; the thinking budget forces its token at exactly position ``budget``.
Planted: pruned beams not freed, the length penalty applied to the running score, and
best-of-N streams drawn as one (tokens, n) array (each caught by the test named beside it)."""

from __future__ import annotations

import ast
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmspec.serve import search as S
from lmspec.serve import speculative as SP
from lmspec.serve.engine import SamplingParams
from lmspec.spec._model_config import PRESETS, init_params

V = 8
CONFIG = PRESETS["tiny-llama"].replace(vocab_size=V, n_layers=2, d_model=32, d_ff=48,
                                       n_heads=4, n_kv_heads=2)


def _sharp(seed, scale=4.0):
    """Random weights with the head scaled up, so that the distributions are peaked."""
    p = init_params(CONFIG, seed)
    head = "lm_head" if "lm_head" in p else "embed"
    return dict(p, **{head: p[head] * scale})


PARAMS = _sharp(1)
PROMPTS = [[1, 2, 3], [4], [5, 0, 5, 0, 5], [7, 7, 2, 6]]
TOL = 1e-9  # float64 reference: a paged step and a full forward differ by rounding only


def _runner(backend="reference", dtype="float64"):
    return SP.Runner(CONFIG, PARAMS, backend=backend, dtype=dtype)


def _logp(runner, prompt, out):
    return S._log_softmax(runner.logits(prompt + out, 1)[0])


def _oracle(prompt, steps, length_penalty, eos_id):
    """Every continuation of up to ``steps`` tokens (ending at the first EOS), scored
    sum log p / len ** length_penalty; the best (tokens, score)."""
    r, best = _runner(), (None, -np.inf)

    def walk(out, total):
        nonlocal best
        if out and (len(out) == steps or out[-1] == eos_id):
            score = total / len(out) ** length_penalty
            if score > best[1]:
                best = (list(out), score)
            return
        lp = _logp(r, prompt, out)
        for t in range(V):
            walk(out + [t], total + lp[t])

    walk([], 0.0)
    return best


class _Checks:
    """on_step: the invariants after every step; the refcounts of the prompt's full blocks
    (``full`` of them) against the number of live beams."""

    def __init__(self, full=0):
        self.calls, self.shared, self.full = 0, [], full

    def __call__(self, bm):
        bm.check_invariants()
        self.calls += 1
        if bm.sequences:
            table = bm.block_table(bm.sequences[0])
            self.shared.append(([bm.refcount(b) for b in table[:self.full]],
                                len(bm.sequences)))
        self.last = (len(bm.free_blocks), bm.num_blocks, bm.sequences,
                     [bm.refcount(b) for b in range(bm.num_blocks)])


def _all_freed(checks):
    free, total, seqs, refs = checks.last
    assert free == total and not seqs and not any(refs), checks.last


# ---------------------------------------------------------------- beam search

@pytest.mark.parametrize("eos_id", [None, 3])
def test_width_one_is_greedy(eos_id):
    for prompt in PROMPTS:
        want = SP.greedy_reference(_runner(), prompt, 7)
        if eos_id in want:
            want = want[:want.index(eos_id) + 1]
        (beam,) = S.beam_search(_runner(), prompt, 1, 7, eos_id=eos_id, block_size=2)
        assert beam.tokens == want and beam.finished == (eos_id in want)


@settings(max_examples=4, deadline=None)
@given(prompt=st.lists(st.integers(0, V - 1), min_size=1, max_size=4),
       eos_id=st.sampled_from([None, 0, 3]), length_penalty=st.sampled_from([0.0, 1.0, 2.0]),
       block_size=st.sampled_from([1, 2, 4]))
def test_exhaustive_width_finds_the_enumerated_argmax(prompt, eos_id, length_penalty,
                                                      block_size):
    steps = 3
    checks = _Checks()
    beams = S.beam_search(_runner(), prompt, V ** steps, steps, length_penalty=length_penalty,
                          eos_id=eos_id, block_size=block_size, on_step=checks)
    tokens, score = _oracle(prompt, steps, length_penalty, eos_id)
    assert beams[0].tokens == tokens and abs(beams[0].score - score) < TOL
    _all_freed(checks)


def test_beams_rescore_to_a_full_forward_and_share_blocks():
    """(d) each beam's logprobs equal a full forward's; (c) invariants after every step,
    the prompt's first block shared by every live beam, every block given back."""
    r = _runner()
    for prompt in PROMPTS:
        checks = _Checks(full=len(prompt) // 2)
        beams = S.beam_search(_runner(), prompt, 4, 5, eos_id=0, block_size=2,
                              length_penalty=0.5, on_step=checks)
        assert checks.calls == 5 + 2 and 1 <= len(beams) <= 4
        # every live beam holds the prompt's full blocks (copy-on-write: no copies of them)
        assert all(refs == [live] * checks.full for refs, live in checks.shared)
        assert checks.shared[1][1] > 1  # several beams after step 1
        _all_freed(checks)
        for b in beams:
            want = [_logp(r, prompt, b.tokens[:i])[t] for i, t in enumerate(b.tokens)]
            assert np.allclose(b.logprobs, want, atol=TOL, rtol=0)
            assert abs(b.sum_logprob - sum(want)) < TOL
            assert abs(b.score - sum(want) / len(b.tokens) ** 0.5) < TOL
        assert [b.score for b in beams] == sorted((b.score for b in beams), reverse=True)


def test_beam_search_on_torch_width_one_is_greedy():
    """float32 on torch_triton: a paged step and the Runner's cache round alike here."""
    pytest.importorskip("torch")
    r = _runner("torch_triton", "float32")
    for prompt in PROMPTS[:2]:
        (beam,) = S.beam_search(r, prompt, 1, 6, block_size=2)
        assert beam.tokens == SP.greedy_reference(r, prompt, 6)


# planted bugs in beam search


def _plant_no_free(blocks, seqs, live):
    """Planted: pruned beams keep their blocks."""


def _plant_running_penalty(lp):
    def expand(beams, logits, width):
        """Planted: the running score normalized by len ** lp at every step."""
        cands = []
        for i, (bm, lg) in enumerate(zip(beams, logits)):
            if bm.finished:
                cands.append((bm.sum_logprob, i, -1, 0.0))
                continue
            logp, n = S._log_softmax(lg), len(bm.tokens) + 1
            cands += [((bm.sum_logprob + logp[t]) / n ** lp, i, t, float(logp[t]))
                      for t in range(V)]
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        return cands[:width]
    return expand


def test_plant_unfreed_pruned_beams_is_caught(monkeypatch):
    monkeypatch.setattr(S, "_free_pruned", _plant_no_free)
    checks = _Checks()
    S.beam_search(_runner(), PROMPTS[0], 2, 4, block_size=2, on_step=checks)
    with pytest.raises(AssertionError):
        _all_freed(checks)


def test_plant_length_penalty_in_the_running_score_is_caught(monkeypatch):
    monkeypatch.setattr(S, "_expand", _plant_running_penalty(2.0))
    for prompt, eos in itertools.product(PROMPTS, [3, None]):  # stops at the first catch
        beams = S.beam_search(_runner(), prompt, V ** 3, 3, length_penalty=2.0, eos_id=eos)
        tokens, score = _oracle(prompt, 3, 2.0, eos)
        if beams[0].tokens != tokens or abs(beams[0].score - score) > TOL:
            return
    pytest.fail("the oracle did not catch the plant")


# ---------------------------------------------------------------- best-of-N, self-consistency

SAMPLED = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=6)


def test_best_of_n_streams_do_not_depend_on_n():
    four = S.best_of_n(_runner(), PROMPTS[0], 4, params=SAMPLED, seed=3)
    eight = S.best_of_n(_runner(), PROMPTS[0], 8, params=SAMPLED, seed=3)
    assert [c.tokens for c in eight.candidates[:4]] == [c.tokens for c in four.candidates]
    assert len({tuple(c.tokens) for c in eight.candidates}) > 1  # the samples differ
    again = S.best_of_n(_runner(), PROMPTS[0], 4, params=SAMPLED, seed=3)
    assert [c.tokens for c in again.candidates] == [c.tokens for c in four.candidates]


def test_plant_streams_that_depend_on_n_is_caught(monkeypatch):
    def one_array(seed, i, n):
        """Planted: one (tokens, n) array of uniforms for all samples."""
        u = np.random.default_rng(seed).random((64, n))
        return lambda t: float(u[t, i])

    monkeypatch.setattr(S, "_stream", one_array)
    with pytest.raises(AssertionError):
        test_best_of_n_streams_do_not_depend_on_n()


def test_best_of_n_scores_and_argmax():
    r = _runner()
    res = S.best_of_n(_runner(), PROMPTS[1], 5, params=SAMPLED, seed=0, eos_id=3)
    for c in res.candidates:
        want = [_logp(r, PROMPTS[1], c.tokens[:i])[t] for i, t in enumerate(c.tokens)]
        assert np.allclose(c.logprobs, want, atol=TOL, rtol=0)
        assert abs(c.score - np.mean(want)) < TOL
        assert 3 not in c.tokens[:-1]
    assert res.best == int(np.argmax([c.score for c in res.candidates]))
    tied = S.best_of_n(_runner(), PROMPTS[1], 5, params=SAMPLED, seed=0, scorer=lambda ids: 1)
    assert tied.best == 0  # ties go to the lowest index
    sevens = S.best_of_n(_runner(), PROMPTS[1], 5, params=SAMPLED, seed=0,
                         scorer=lambda ids: ids.count(7))
    counts = [c.tokens.count(7) for c in sevens.candidates]
    assert sevens.best == counts.index(max(counts))


def test_majority_vote_by_hand():
    assert S.majority_vote(["a", None, "b", "b", "a"]) == ("a", {"a": 2, "b": 2})
    assert S.majority_vote([None, 2, 1, 1]) == (1, {2: 1, 1: 2})
    assert S.majority_vote([None, None]) == (None, {})


def test_self_consistency_votes_over_the_samples():
    vote = S.self_consistency(_runner(), PROMPTS[2], 7, params=SAMPLED, seed=1,
                              extract_answer=lambda ids: ids[-1] % 3 or None)
    assert vote.answers == [c.tokens[-1] % 3 or None for c in vote.candidates]
    assert vote.counts == S.majority_vote(vote.answers)[1]
    assert sum(vote.counts.values()) == sum(a is not None for a in vote.answers)
    assert vote.answer is None or vote.counts[vote.answer] == max(vote.counts.values())


# ---------------------------------------------------------------- thinking budget

GREEDY = SamplingParams(temperature=0, max_tokens=4)


@pytest.mark.parametrize("budget", [0, 3, 5])
def test_budget_forces_the_end_of_thinking_at_position_budget(budget):
    for prompt in PROMPTS:
        free = SP.greedy_reference(_runner(), prompt, budget) if budget else []
        end = next(t for t in range(V) if t not in free)  # the model would not emit it
        out = S.generate_with_thinking_budget(_runner(), prompt, think_end_id=end,
                                              budget=budget, params=GREEDY)
        assert out.forced and out.num_thinking == budget
        assert out.tokens[:budget] == free and out.tokens[budget] == end
        ctx = prompt + out.tokens[:budget + 1]
        assert out.tokens[budget + 1:] == SP.greedy_reference(_runner(), ctx, 4)


def test_no_forcing_when_the_model_ends_thinking_first():
    for prompt in PROMPTS:
        free = SP.greedy_reference(_runner(), prompt, 12)
        end = free[1]
        j = free.index(end)  # its first emission
        out = S.generate_with_thinking_budget(_runner(), prompt, think_end_id=end,
                                              budget=j + 2, params=GREEDY)
        assert not out.forced and out.num_thinking == j
        assert out.tokens == free[:j + 1 + 4]  # the model's own output, nothing inserted


def test_sampled_thinking_respects_the_budget():
    for seed in range(6):
        p = SamplingParams(temperature=1.0, max_tokens=3, seed=seed)
        out = S.generate_with_thinking_budget(_runner(), [1, 2], think_end_id=5, budget=4,
                                              params=p)
        assert out.tokens.index(5) == out.num_thinking <= 4
        assert out.forced == (5 not in out.tokens[:4])
        assert len(out.tokens) == out.num_thinking + 1 + 3


# ---------------------------------------------------------------- bad input

def test_bad_arguments():
    r = _runner()
    for call, name in [(lambda: S.best_of_n(r, [1], 0), "n"),
                       (lambda: S.self_consistency(r, [1], 0, extract_answer=len), "n"),
                       (lambda: S.beam_search(r, [1], 0, 3), "beam_width"),
                       (lambda: S.beam_search(r, [1], 2, 0), "max_new_tokens"),
                       (lambda: S.beam_search(r, [V], 2, 2), "prompt_ids"),
                       (lambda: S.generate_with_thinking_budget(r, [1], think_end_id=2,
                                                                budget=-1), "budget"),
                       (lambda: S.generate_with_thinking_budget(r, [1], think_end_id=V,
                                                                budget=2), "think_end_id")]:
        with pytest.raises(ValueError, match=name):
            call()
    hybrid = PRESETS["tiny-hybrid"]
    with pytest.raises(ValueError, match="recurrent"):
        SP.Runner(hybrid, init_params(hybrid, 0))


def test_generate_best_of_and_beam_on_the_cli(tmp_path, capsys):
    """lmspec generate --best-of / --beam on a 2-step run: the printed completion is the
    best candidate (marked on stderr), beam width 1 is greedy decoding, bad values exit 2."""
    pytest.importorskip("torch")
    from lmspec.conformance.cli import main

    run = tmp_path / "run"
    assert main(["train", "--steps", "2", "--warmup", "1", "--out", str(run), "--no-progress",
                 "--corpus-bytes", "300000", "--valid-every", "4", "--batch-size", "2",
                 "--seq-len", "32"]) == 0
    gen = ["generate", "def f(x):", "--model", str(run), "--max-tokens", "6"]
    capsys.readouterr()
    assert main([*gen, "--best-of", "3", "--seed", "1"]) == 0
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if "candidate" in ln]
    assert len(lines) == 3 and sum("*candidate" in ln for ln in lines) == 1
    best = next(ln for ln in lines if "*candidate" in ln).rsplit(": ", 1)[1]
    assert out.rstrip("\n") == "def f(x):" + ast.literal_eval(best)
    scores = [float(ln.split("mean log-prob ")[1].split(":")[0]) for ln in lines]
    marked = [i for i, ln in enumerate(lines) if "*candidate" in ln][0]
    assert scores[marked] == max(scores)
    assert main([*gen, "--beam", "1"]) == 0
    beam, _ = capsys.readouterr()
    assert main([*gen, "--temperature", "0"]) == 0
    greedy, _ = capsys.readouterr()
    assert beam == greedy
    assert main([*gen, "--beam", "0"]) == 2
    assert main([*gen, "--best-of", "2", "--speculative", "ngram"]) == 2
