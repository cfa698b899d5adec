"""Proof that the suite can fail: every planted-bug backend in mutants.py is caught, by the
conformance suite itself run in a subprocess on the CI examples (unshrunk), read back from its
result rows (which also checks that the results writer records failures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import mutants  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def failures(tmp_path_factory) -> dict[str, list[str]]:
    """backend name -> the tests it failed, over one conformance run of all mutants."""
    results = tmp_path_factory.mktemp("mutants")
    stems = sorted({stem for stem, _ in mutants.MUTANTS.values()})
    cmd = [sys.executable, "-m", "pytest", *(str(ROOT / "conformance" / f"test_{s}.py")
                                             for s in stems),
           "-q", "-p", "no:cacheprovider", "--import-mode=importlib", "--profile", "ci-noshrink",
           "--only-implemented",
           "-W", "ignore"]
    for name in mutants.MUTANTS:
        cmd += ["--backend", f"mutants:{name}"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent),
           "LMSPEC_RESULTS": str(results)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1500)
    assert proc.returncode == 1, f"expected failures, got exit {proc.returncode}:\n" \
                                 f"{proc.stdout[-3000:]}{proc.stderr[-2000:]}"
    failed = defaultdict(list)
    for line in (results / "conformance.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["metric"] == "outcome" and row["value"] == "failed":
            failed[row["backend"]].append(f"{row['component']}:{row['test']}")
    return failed


@pytest.mark.parametrize("name", sorted(mutants.MUTANTS))
def test_planted_bug_is_caught(failures, name):
    stem, backend = mutants.MUTANTS[name]
    caught = failures.get(backend.NAME, [])
    assert caught, f"planted bug {name!r} in {stem} passed the whole conformance suite"
    assert all(t.startswith(f"{stem}:") for t in caught), caught
    missing = [t for t in mutants.MUST_CATCH.get(name, ()) if f"{stem}:{t}" not in caught]
    assert not missing, f"planted bug {name!r}: these tests should fail on it but passed: " \
                        f"{missing} (failed: {caught})"


def test_there_are_at_least_ten_distinct_plants():
    assert len(mutants.MUTANTS) >= 10
    assert len({stem for stem, _ in mutants.MUTANTS.values()}) >= 8
