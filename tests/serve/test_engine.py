"""The engine: greedy and seeded outputs are token-identical to running each request alone,
whatever the batch composition, arrival order, chunk size, block size, preemptions or prefix
cache hits; prefill-then-decode through the paged store equals full forwards; the sampler's
conventions by hand. A divergence is accepted only at a measured knife edge (the two best
logits of the request-alone run within 1e-4 at the first differing token: a chunked and an
unchunked prefill round differently in float32), and hypothesis counts those."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from lmspec import backends
from lmspec.serve.engine import Engine, SamplingParams, sample_one
from lmspec.spec._model_config import PRESETS, init_params

pytest.importorskip("torch")

CONFIGS = {"dense": PRESETS["tiny-llama"].replace(vocab_size=64, n_layers=2, d_model=64,
                                                  d_ff=96, n_heads=4, n_kv_heads=2),
           "moe": PRESETS["tiny-moe"].replace(vocab_size=64, n_layers=2, d_model=64, d_ff=96),
           "hybrid": PRESETS["tiny-hybrid"].replace(vocab_size=64, d_model=64, d_ff=96)}
PARAMS = {k: {n: a.astype(np.float32) for n, a in init_params(c, 3).items()}
          for k, c in CONFIGS.items()}
KNIFE = 1e-4


def _alone(kind, prompt, params):
    """The request alone: no batching, no chunking, no cache hits, one sequence's model."""
    eng = Engine(CONFIGS[kind], PARAMS[kind], block_size=16, max_num_seqs=1,
                 max_tokens_per_step=512, max_model_len=256, prefix_caching=False,
                 batched=False)
    (out,) = eng.generate([prompt], params)
    return out


def _last_logits(kind, tokens) -> np.ndarray:
    """The full forward's (no cache) logits at the last position, float64."""
    b = backends.load("torch_triton")
    if kind not in _ON_BACKEND:
        _ON_BACKEND[kind] = {n: b.asarray(a, "float32") for n, a in PARAMS[kind].items()}
    lg, _ = b.fn("model")(_ON_BACKEND[kind], b.asarray(np.asarray([tokens]), None),
                          config=CONFIGS[kind])
    return np.asarray(b.to_numpy(lg), np.float64)[0, -1]


_ON_BACKEND: dict = {}


def _on_a_knife_edge(kind, prompt, out, q) -> bool:
    """Whether the token after prompt + out is decided within rounding: greedy with the top
    two logits within KNIFE, or a sampled token whose uniform lies within KNIFE of the
    boundary of its CDF interval (the pick changes within u +- KNIFE)."""
    from lmspec.serve.engine import uniform

    logits = _last_logits(kind, prompt + out)
    if q.temperature == 0:
        top = np.sort(logits)[-2:]
        return float(top[1] - top[0]) < KNIFE
    u = uniform(q.seed, len(out))
    pick = {sample_one(logits, q, prompt, out, min(max(x, 0.0), 1 - 1e-12))[0]
            for x in (u - KNIFE, u + KNIFE)}
    return len(pick) > 1


requests = st.lists(st.tuples(st.lists(st.integers(0, 63), min_size=1, max_size=30),
                              st.integers(1, 8), st.integers(0, 3), st.booleans()),
                    min_size=1, max_size=6)


@settings(deadline=None, max_examples=12)
@given(kind=st.sampled_from(sorted(CONFIGS)), reqs=requests,
       block_size=st.sampled_from([1, 4, 16]), max_tokens=st.integers(1, 40),
       max_num_seqs=st.integers(1, 4), tight=st.booleans(), shared=st.booleans(),
       batched=st.booleans())
def test_outputs_equal_each_request_alone(kind, reqs, block_size, max_tokens, max_num_seqs,
                                          tight, shared, batched):
    head = [5, 9, 2, 7, 1, 3, 8, 4, 6] if shared else []  # a shared system prompt
    prompts = [head + p for p, *_ in reqs]
    params = [SamplingParams(max_tokens=m, temperature=0 if greedy else 0.9, seed=s,
                             ignore_eos=True) for (_, m, s, greedy) in reqs]
    need = max(-(-(len(p) + q.max_tokens) // block_size) for p, q in zip(prompts, params))
    eng = Engine(CONFIGS[kind], PARAMS[kind], block_size=block_size,
                 num_blocks=need if tight else 4 * need * len(prompts),
                 max_num_seqs=max_num_seqs, max_tokens_per_step=max_tokens, max_model_len=256,
                 batched=batched)
    event(f"batched={eng.batched}")
    outs = eng.generate(prompts, params)
    if eng.stats["preemptions"]:
        event("preempted")
    if eng.stats["cached_tokens"]:
        event("prefix-cache hit")
    for p, q, got in zip(prompts, params, outs):
        want = _alone(kind, p, q)
        if got != want:
            i = next(j for j, (a, b) in enumerate(zip(got, want)) if a != b)
            assert _on_a_knife_edge(kind, p, want[:i], q), (
                f"{kind}: output differs from the request alone at token {i}, not on a "
                f"knife edge: {got} vs {want}")
            event("knife edge")
    assert not eng.blocks.sequences
    eng.blocks.check_invariants()


def test_prefill_then_decode_through_pages_equals_full_forwards():
    for kind in CONFIGS:
        prompt = [int(t) for t in np.random.default_rng(1).integers(0, 64, 21)]
        eng = Engine(CONFIGS[kind], PARAMS[kind], block_size=4, max_num_seqs=1,
                     max_tokens_per_step=5, max_model_len=64)  # 5-token prefill chunks
        (got,) = eng.generate([prompt], SamplingParams(max_tokens=6, temperature=0,
                                                       ignore_eos=True))
        toks = list(prompt)
        for _ in range(6):  # greedy by full forwards, no cache at all
            lg = _last_logits(kind, toks)
            assert np.diff(np.sort(lg)[-2:])[0] > KNIFE  # no knife edge in this fixed case
            toks.append(int(np.argmax(lg)))
        assert got == toks[len(prompt):], kind


def test_abort_frees_and_errors():
    eng = Engine(CONFIGS["dense"], PARAMS["dense"], block_size=4, max_model_len=32)
    rid = eng.add_request([1, 2, 3], SamplingParams(max_tokens=10))
    eng.step()
    assert eng.blocks.sequences == (rid,)
    eng.abort(rid)
    assert not eng.blocks.sequences and not eng.has_work()
    with pytest.raises(ValueError, match="prompt"):
        eng.add_request([], SamplingParams())
    with pytest.raises(ValueError, match="token ids"):
        eng.add_request([64], SamplingParams())
    with pytest.raises(ValueError, match="max_model_len"):
        eng.add_request([1] * 30, SamplingParams(max_tokens=5))
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-0.1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)


# ----------------------------------------------------------------------------- the sampler

LOGITS = np.log(np.array([0.5, 0.3, 0.15, 0.05]))  # probabilities 0.5, 0.3, 0.15, 0.05


@pytest.mark.parametrize("kw,u,want", [
    ({"temperature": 0}, 0.99, 0),
    ({}, 0.49, 0), ({}, 0.5, 1), ({}, 0.79, 1), ({}, 0.8, 2), ({}, 0.96, 3),
    # top-p 0.79: 0.5 + 0.3 crosses it (the crossing token kept): {0, 1}, renormalised to
    # (0.625, 0.375)
    ({"top_p": 0.79}, 0.62, 0), ({"top_p": 0.79}, 0.63, 1), ({"top_p": 0.79}, 0.999, 1),
    # top-p 0.81: the 0.15 token is needed to reach it: {0, 1, 2}
    ({"top_p": 0.81}, 0.999, 2),
    ({"top_k": 1}, 0.99, 0), ({"top_k": 2}, 0.99, 1),
    # min-p 0.35: kept if p >= 0.35 * 0.5 = 0.175: {0, 1}
    ({"min_p": 0.35}, 0.99, 1), ({"min_p": 0.29}, 0.99, 2),
])
def test_sampler_by_hand(kw, u, want):
    tok, lp, _ = sample_one(LOGITS, SamplingParams(**kw), [], [], u)
    assert tok == want


def test_penalties_by_hand():
    z = np.array([2.0, -1.0, 1.0, 0.0])
    # repetition 2 on seen {0, 1}: 2 -> 1, -1 -> -2; greedy picks 2 (logit 1.0 > 1.0? tie:
    # the lowest id): logits (1, -2, 1, 0) -> 0
    assert sample_one(z, SamplingParams(temperature=0, repetition_penalty=2.0), [0], [1],
                      0.0)[0] == 0
    # presence 1.5 on output {0}: (0.5, -1, 1, 0) -> 2
    assert sample_one(z, SamplingParams(temperature=0, presence_penalty=1.5), [], [0],
                      0.0)[0] == 2
    # frequency 0.6 on output [0, 0]: 2 - 1.2 = 0.8 < 1 -> 2
    assert sample_one(z, SamplingParams(temperature=0, frequency_penalty=0.6), [], [0, 0],
                      0.0)[0] == 2


def test_logprobs_are_of_the_final_distribution():
    tok, lp, top = sample_one(LOGITS, SamplingParams(top_p=0.79, logprobs=2), [], [], 0.0)
    assert tok == 0 and lp == pytest.approx(np.log(0.5 / 0.8))
    assert list(top) == [0, 1] and top[1] == pytest.approx(np.log(0.3 / 0.8))


# ----------------------------------------------------------------------------- plants


def _plant_decode_position_off_by_one(eng):
    """The cache handed to a decode is one position short: the new token sits one position
    early and the last cached key is never seen."""
    gather = eng.kv.gather
    eng.kv.gather = lambda s, t, n: gather(s, t, max(n - 1, 0)) if n > 1 else gather(s, t, n)


def _plant_kv_slot_off_by_one(eng):
    """KV written one slot past where it is read (the block offset + 1, within the block)."""
    kv, slots, write = eng.kv, eng.kv._slots, eng.kv.write

    def shifted(table, start, n):
        blk, off = slots(table, start, n)
        return blk, (off + 1) % kv.block_size

    def bad_write(*a, **k):
        kv._slots = shifted
        try:
            write(*a, **k)
        finally:
            kv._slots = slots
    kv.write = bad_write


def _plant_batched_decode_misses_a_key(eng):
    """Batched steps: a decode attends over its sequence less one key (the window of its
    slots one short: the newest cached position is never read)."""
    kv, plan = eng.kv, eng.kv.plan

    def bad_plan(chunks):
        plan(chunks)
        kv._plan = [(q0, q1, every[:-2] if q1 - q0 == 1 and len(every) > 2 else every)
                    for q0, q1, every in kv._plan]
    kv.plan = bad_plan


def _plant_batched_kv_slot_off_by_one(eng):
    """Batched steps: the step's K/V written one slot past where they are read."""
    kv, plan = eng.kv, eng.kv.plan

    def bad_plan(chunks):
        plan(chunks)
        b = kv.block_size
        kv.new_slots = kv.new_slots // b * b + (kv.new_slots % b + 1) % b
    kv.plan = bad_plan


@pytest.mark.parametrize("plant,batched", [
    (_plant_decode_position_off_by_one, False), (_plant_kv_slot_off_by_one, False),
    (_plant_batched_decode_misses_a_key, True), (_plant_batched_kv_slot_off_by_one, True)])
def test_planted_engine_bugs_are_caught(plant, batched):
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9, 8, 7, 6, 5]]
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    want = [_alone("dense", p, params) for p in prompts]

    def engine():
        return Engine(CONFIGS["dense"], PARAMS["dense"], block_size=4, max_num_seqs=2,
                      max_tokens_per_step=4, max_model_len=64, batched=batched)
    good = engine()
    assert good.batched == batched
    assert good.generate(prompts, params) == want  # the real engine, same workload
    bad = engine()
    plant(bad)
    assert bad.generate(prompts, params) != want
