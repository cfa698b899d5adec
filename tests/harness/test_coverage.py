"""Parameter coverage (issue 18): every value a component states (``Component.coverage``) is
drawn by its strategy in at least spec._coverage.MIN_SHARE of the examples, counted from
hypothesis' own statistics (the events the generic tests emit); most examples are not empty;
a strategy that stops drawing a stated value fails here; and the conformance run writes what
its tests drew to coverage.jsonl."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis.statistics import collector

from lmspec import spec
from lmspec.spec import _coverage

# the ci profile's 20 examples, in runs of their own seeds (as ci runs one per backend and
# dtype, each seeded by its test id): a share is measured over 400 examples rather than one
# run's luck. Within a run hypothesis' examples are correlated (it mutates earlier ones): a
# value expected one time in six was drawn 17 to 47 times in eight blocks of ten runs.
RUNS, PER_RUN = 20, 20
MIN_NONEMPTY = 0.5  # at least half of a strategy's examples exercise the math at all
ROOT = Path(__file__).resolve().parents[2]
STATED = [s for s in spec.stems() if spec.component(s).coverage]


@functools.cache
def stated_counts(stem: str) -> tuple[dict, int]:
    return draw_counts(spec.component(stem))


def draw_counts(comp: spec.Component, runs: int = RUNS) -> tuple[dict, int]:
    """(feature, value) -> examples, and the number of examples, from hypothesis' statistics
    of a test that emits the features as the generic tests do."""
    got: list[dict] = []
    for run in range(runs):
        @seed(run)
        @settings(max_examples=PER_RUN, database=None, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=comp.cases())
        def draw(case):
            _coverage.emit(comp, case)

        with collector.with_value(got.append):
            draw()
    counts: dict = {}
    for stats in got:
        for key, (drawn, _) in _coverage.tally(stats).items():
            counts[key] = counts.get(key, 0) + drawn
    return counts, counts[("examples", "all")]


def test_the_components_state_coverage():
    # the components whose math has classes (conventions, kinds, optional inputs) say which
    assert {"sdpa", "rope", "mla", "moe_router", "moe_layer", "cross_entropy", "quant_fp8",
            "linear_attention", "model"} <= set(STATED)


# Known shortfalls, strict (the test fails once they are fixed): quant_fp4 draws a static
# nvfp4 tensor scale in under 4% of examples (nvfp4 one in three, then integers(0, 3) == 0).
# The strategy fix (and the sizes() fix for empty shares) changes every component's ci
# examples and waits for a full CI run that verifies the new draws.
KNOWN_SHORT = {"quant_fp4": "a static nvfp4 tensor_scale is drawn in 15 of 400 examples"}


@pytest.mark.parametrize("stem", [
    pytest.param(s, marks=pytest.mark.xfail(strict=True, reason=KNOWN_SHORT[s]))
    if s in KNOWN_SHORT else s for s in STATED])
def test_every_stated_value_is_drawn(stem):
    counts, n = stated_counts(stem)
    assert _coverage.shortfalls(spec.component(stem), counts, n) == []


@pytest.mark.parametrize("stem", [s for s in spec.stems() if s not in ("tokenizer",
                                                                           "bpe_train")])
def test_most_examples_are_not_empty(stem):
    counts, n = stated_counts(stem)
    assert counts.get(("empty", "no"), 0) >= MIN_NONEMPTY * n, (
        f"{stem}: {counts.get(('empty', 'yes'), 0)} of {n} examples are empty")


def test_a_strategy_that_stops_drawing_a_value_fails():
    # sdpa's strategy with the grouped-query heads filtered out: the GQA head mapping would go
    # untested by the generic tests, and the coverage check says so
    sdpa = spec.component("sdpa")
    mha_only = dataclasses.replace(sdpa, cases=lambda: sdpa.cases().filter(
        lambda c: c.arrays["q"].shape[2] == c.arrays["k"].shape[2]))
    counts, n = draw_counts(mha_only, 2)
    lines = _coverage.shortfalls(mha_only, counts, n)
    assert any("heads=GQA drawn in 0" in line for line in lines)
    assert any("heads=MQA drawn in 0" in line for line in lines)
    assert not any("heads=MHA" in line for line in lines)


def test_the_features_of_a_case():
    sdpa = spec.component("sdpa")
    q, k = np.zeros((1, 2, 4, 8)), np.zeros((1, 3, 2, 8))
    case = spec.Case({"q": q, "k": k, "v": k, "segment_ids_q": None, "segment_ids_kv": None},
                     {"causal": True, "window": 2, "softcap": None, "scale": 0.5})
    assert _coverage.features(sdpa, case) == {
        "empty": "no", "causal": "True", "window": "2", "softcap": "None", "scale": "0.5",
        "segment_ids_q": "absent", "segment_ids_kv": "absent", "heads": "GQA", "sliding": "yes",
        "queries": "fewer"}
    empty = spec.Case({**case.arrays, "k": np.zeros((1, 0, 2, 8))}, case.params)
    assert _coverage.features(sdpa, empty) == {"empty": "yes"}


def test_the_conformance_run_writes_what_its_tests_drew(tmp_path):
    env = {**os.environ, "LMSPEC_RESULTS": str(tmp_path)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           str(ROOT / "conformance" / "test_sdpa.py"), "--backend", "reference",
           "--profile", "smoke", "-k", "forward or backward"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "coverage.jsonl").read_text().splitlines()]
    tests = {r["test"] for r in rows}
    assert tests == {"forward", "backward"}
    for test in tests:
        mine = [r for r in rows if r["test"] == test]
        total = next(r for r in mine if r["feature"] == "examples")
        assert total["drawn"] == 4 and total["profile"] == "smoke"  # smoke: 4 examples
        nonempty = sum(r["drawn"] for r in mine if r["feature"] == "empty")
        assert nonempty == total["drawn"]  # every example says whether it is empty
        heads = sum(r["drawn"] for r in mine if r["feature"] == "heads")
        assert heads == next(r["drawn"] for r in mine
                             if (r["feature"], r["value"]) == ("empty", "no"))
