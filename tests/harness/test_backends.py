"""Backend plug-in: by name, entry point, dotted path or module:attribute; missing pieces are
'not implemented', never passed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lmspec import backends

ROOT = Path(__file__).resolve().parents[2]


def test_reference_is_built_in_and_ours_are_entry_points():
    assert backends.load("reference").name == "reference"
    assert {"torch_triton", "jax_xla", "peers"} <= set(backends.available())


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="backend: unknown name 'nope'"):
        backends.load("nope")


def test_missing_module_of_a_dotted_path_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot import 'no_such_pkg_xyz.mod'"):
        backends.load("no_such_pkg_xyz.mod")


USER_BACKEND = '''
"""A backend lmspec has never seen: rms_norm only, in NumPy float32."""
import numpy as np
from lmspec.spec.rms_norm import check_args

NAME = "user_np"
DTYPES = ("float32",)

def asarray(a, dtype):
    return np.asarray(a) if dtype is None else np.asarray(a, dtype=dtype)

def to_numpy(t):
    return np.asarray(t)

def rms_norm(x, weight=None, *, eps=1e-6, weight_offset=0.0):
    check_args(x, weight, eps=eps, weight_offset=weight_offset)
    x32 = x.astype(np.float32)
    ms = np.mean(x32.astype(np.float64) ** 2, -1, keepdims=True)
    y = (x32 / np.sqrt(ms + eps)).astype(np.float32)
    return y if weight is None else (y * (weight_offset + weight)).astype(np.float32)
'''


def test_a_users_module_is_tested_without_touching_lmspec(tmp_path):
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mybackend.py").write_text(textwrap.dedent(USER_BACKEND))
    results = tmp_path / "results"
    env = {"PYTHONPATH": str(tmp_path), "LMSPEC_RESULTS": str(results)}
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "conformance" / "test_rms_norm.py"),
           str(ROOT / "conformance" / "test_softmax.py"), "-q", "-p", "no:cacheprovider",
           "--import-mode=importlib", "--backend", "userpkg.mybackend", "--profile", "smoke",
           "-k", "forward or errors"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**_env(), **env},
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = [json.loads(x) for x in (results / "conformance.jsonl").read_text().splitlines()]
    outcome = {(r["component"], r["test"]): r["value"] for r in rows if r["metric"] == "outcome"}
    assert outcome[("rms_norm", "forward")] == "passed"
    assert outcome[("softmax", "forward")] == "not implemented"  # never 'passed'


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LMSPEC_RESULTS")}
