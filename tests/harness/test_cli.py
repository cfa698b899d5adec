"""The command line: one clear line for user errors, list, conform, replay of a saved case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def lmspec(*args, cwd, extra_env=None):
    env = {**os.environ, **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "lmspec.conformance.cli", *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_unknown_component_is_one_line(tmp_path):
    proc = lmspec("conform", "--component", "nope*", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "nope*" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_backend_is_one_line(tmp_path):
    proc = lmspec("list", "--backend", "nope", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "nope" in proc.stderr


def test_report_without_results_says_what_to_run(tmp_path):
    proc = lmspec("report", cwd=tmp_path)
    assert proc.returncode == 2 and "lmspec conform" in proc.stderr


def test_list_shows_components_and_backends(tmp_path):
    proc = lmspec("list", "--backend", "reference", cwd=tmp_path)
    assert proc.returncode == 0
    assert "sdpa" in proc.stdout and "reference" in proc.stdout


def test_conform_writes_results_and_report(tmp_path):
    proc = lmspec("conform", "--backend", "reference", "--component", "rms_norm",
                  "--profile", "smoke", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "results" / "conformance.jsonl").exists()
    assert (tmp_path / "results" / "report.html").exists()


def test_a_failure_prints_a_replay_command_that_reproduces_it(tmp_path):
    env = {"PYTHONPATH": str(HERE)}
    proc = lmspec("conform", "--backend", "mutants:rms_norm_eps_outside_root", "--component",
                  "rms_norm", "-k", "forward", "--no-report", cwd=tmp_path, extra_env=env)
    assert proc.returncode == 1
    out = proc.stdout
    for needle in ("lmspec conformance failure: rms_norm forward", "backend=mutant-",
                   "dtype=float32", "worst element at index", "reproduce: lmspec replay"):
        assert needle in out, needle
    case = out.split("reproduce: lmspec replay ")[1].split()[0]
    meta = json.loads((tmp_path / case).read_text())
    assert meta["stem"] == "rms_norm"
    replay = lmspec("replay", case, "--backend", "mutants:rms_norm_eps_outside_root",
                    cwd=tmp_path, extra_env=env)
    assert replay.returncode == 1 and "worst element" in replay.stdout
    fixed = lmspec("replay", case, "--backend", "reference", cwd=tmp_path)
    assert fixed.returncode == 0 and "passes" in fixed.stdout
