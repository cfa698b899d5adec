"""Proof that the suite can fail: every planted-bug backend in mutants.py is caught, by the
conformance suite itself run in a subprocess on the CI examples (unshrunk), read back from its
result rows (which also checks that the results writer records failures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from lmspec.conformance import _results
from lmspec.reports.plants import generic_miss, has_generic, plant_rows, section

sys.path.insert(0, str(Path(__file__).parent))
import mutants  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


# The run is split into this many conformance subprocesses, run side by side: the pytest process
# itself only waits meanwhile, so on CI's two cores two shards take about half the time of one.
SHARDS = 2
# seconds a stem's planted-bug tests took in one run (--durations), for balancing the shards;
# an unlisted stem counts 1 s (most take 0.1-3 s)
COST = {"model": 28, "train_step": 23, "tokenizer": 21, "moe_layer": 7, "mla": 6,
        "rejection_sample": 5, "sdpa": 4, "rope": 3, "grpo_loss": 2.4, "bpe_train": 2.4,
        "moe_router": 2.3, "linear_attention": 2}


def _shards(stems: list[str]) -> list[list[str]]:
    """Greedy balance of the stems over SHARDS groups by their estimated cost."""
    groups: list[list[str]] = [[] for _ in range(SHARDS)]
    load = [0] * SHARDS
    for stem in sorted(stems, key=lambda s: (-COST.get(s, 1), s)):
        i = load.index(min(load))
        groups[i].append(stem)
        load[i] += COST.get(stem, 1)
    return [g for g in groups if g]


@pytest.fixture(scope="module")
def failures(tmp_path_factory) -> dict[str, list[str]]:
    """backend name -> the tests it failed, over conformance runs of all mutants (one run per
    shard of stems, each with only the mutants of its stems)."""
    stems = sorted({stem for stem, _ in mutants.MUTANTS.values()})
    procs = []
    for shard in _shards(stems):
        results = tmp_path_factory.mktemp("mutants")
        cmd = [sys.executable, "-m", "pytest",
               *(str(ROOT / "conformance" / f"test_{s}.py") for s in shard),
               "-q", "-p", "no:cacheprovider", "--import-mode=importlib",
               "--profile", "ci-noshrink", "--only-implemented", "-W", "ignore"]
        for name, (stem, _) in mutants.MUTANTS.items():
            if stem in shard:
                cmd += ["--backend", f"mutants:{name}"]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent),
               "LMSPEC_RESULTS": str(results)}
        out = results / "stdout.txt"
        with open(out, "w") as sink:
            proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, text=True,
                                    env=env, cwd=ROOT)
        procs.append((proc, results, out))
    failed = defaultdict(list)
    deadline = time.monotonic() + 1500
    try:
        for proc, results, out in procs:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert rc == 1, f"expected failures, got exit {rc}:\n{out.read_text()[-5000:]}"
            for line in (results / "conformance.jsonl").read_text().splitlines():
                row = json.loads(line)
                if row["metric"] == "outcome" and row["value"] == "failed":
                    failed[row["backend"]].append(f"{row['component']}:{row['test']}")
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # the plant -> failing tests matrix, for the report's section (lmspec report)
    _results.write(_plant_rows(failed), _results.results_dir() / "plants.jsonl")
    return failed


def _plant_rows(failures: dict[str, list[str]]) -> list[dict]:
    return plant_rows({name: (stem, failures.get(b.NAME, []))
                       for name, (stem, b) in mutants.MUTANTS.items()})


@pytest.mark.parametrize("name", sorted(mutants.MUTANTS))
def test_planted_bug_is_caught(failures, name):
    stem, backend = mutants.MUTANTS[name]
    caught = failures.get(backend.NAME, [])
    assert caught, f"planted bug {name!r} in {stem} passed the whole conformance suite"
    assert all(t.startswith(f"{stem}:") for t in caught), caught
    missing = [t for t in mutants.MUST_CATCH.get(name, ()) if f"{stem}:{t}" not in caught]
    assert not missing, f"planted bug {name!r}: these tests should fail on it but passed: " \
                        f"{missing} (failed: {caught})"


def test_the_report_lists_the_plants_the_generic_tests_miss(failures, tmp_path):
    rows = _plant_rows(failures)
    _results.write(rows, tmp_path / "plants.jsonl")
    md, page = section(tmp_path, [])
    missed = [r["plant"] for r in rows if generic_miss(r)]
    listed = [line.split(" | ")[0].strip("| ") for line in md.splitlines()[6:]]
    assert listed == missed
    assert f"{len(rows)} planted bugs" in md and f"dedicated tests only: {len(missed)};" in md
    assert has_generic("sdpa") and not has_generic("tokenizer")


def test_there_are_at_least_ten_distinct_plants():
    assert len(mutants.MUTANTS) >= 10
    assert len({stem for stem, _ in mutants.MUTANTS.values()}) >= 8
