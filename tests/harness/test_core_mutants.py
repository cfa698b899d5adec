"""Planted bugs in bpe_fast's C core (backends/bpe_fast/_core.c) that its tests must catch: each
is a one-line change to the source, built with the C compiler and run under the core's tests
through tests/backends/conftest.py. The unchanged source, built the same way, must pass."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "backends" / "bpe_fast" / "_core.c"
CORE_TESTS = "tests/backends/test_bpe_fast_core.py"
SPLIT_TESTS = "tests/backends/test_bpe_fast_pretokenize.py"

# name: (the line as it is, the line planted, the test file that must fail)
PLANTS = {
    "ties_broken_rightmost": ("a->start < b->start", "a->start > b->start", CORE_TESTS),
    "no_whole_piece_shortcut": ("n > 0 ? lookup(self, utf8, n) : NULL",
                                "n == 1 ? lookup(self, utf8, n) : NULL", CORE_TESTS),
    "left_neighbour_of_the_first_part_skipped": ("if (before >= 0) {", "if (before > 0) {",
                                                 CORE_TESTS),
    "four_digit_numbers": ("return e - i > 3 ? i + 3 : e;", "return e - i > 4 ? i + 4 : e;",
                           SPLIT_TESTS),
    "o200k_slash_after_line_feed_dropped": ("(slash && at(x, e) == '/')",
                                            "(0 && at(x, e) == '/')", SPLIT_TESTS),
    "stop_one_too_late": ("stop < endpos ? stop - pos : x.end", "stop < endpos ? stop - pos + 1 "
                          ": x.end", SPLIT_TESTS),
}

CC = os.environ.get("CC", "gcc")
pytestmark = pytest.mark.skipif(shutil.which(CC) is None, reason=f"no C compiler ({CC})")


def build(tmp_path: Path, plant: tuple[str, str] | None) -> Path:
    source = SOURCE.read_text()
    if plant is not None:
        assert source.count(plant[0]) == 1, f"the plant's line is not in _core.c once: {plant[0]}"
        source = source.replace(*plant)
    c = tmp_path / "_core.c"
    c.write_text(source)
    so = tmp_path / f"_core{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run([CC, "-O1", "-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}",
                    str(c), "-o", str(so)], check=True, capture_output=True)
    return so


def run_tests(so: Path, tests: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LMSPEC_TEST_BPE_CORE=str(so), LMSPEC_PROFILE="ci")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           tests], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("tests", (CORE_TESTS, SPLIT_TESTS))
def test_the_unchanged_source_passes(tmp_path, tests):
    done = run_tests(build(tmp_path, None), tests)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(PLANTS))
def test_planted_bug_is_caught(tmp_path, name):
    before, after, tests = PLANTS[name]
    done = run_tests(build(tmp_path, (before, after)), tests)
    assert done.returncode not in (0, 5), f"{name} passed {tests}:\n{done.stdout[-2000:]}"
