"""Conformance results as data: long-format rows, one per (component, backend, dtype, test,
metric), written as JSON lines for ``lmspec report`` (STYLE.md 12)."""

from __future__ import annotations

import json
import os
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

RESULTS_ENV = "LMSPEC_RESULTS"
DEFAULT_DIR = Path("results")

# (stem, backend, dtype, test) -> aggregated facts
_checks: dict[tuple[str, str, str, str], dict[str, Any]] = defaultdict(
    lambda: {"examples": 0, "worst_ratio": 0.0, "weak": 0, "fallback": 0, "unsupported": 0,
             "out_of_range": 0, "status": None, "unsupported_reason": ""})


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV, DEFAULT_DIR))


def failures_dir() -> Path:
    return results_dir() / "failures"


def _current_test(default: str) -> str:
    """The running pytest test's name (``test_backward[...]`` -> ``backward``), so that the
    numbers recorded here join the outcome pytest reports for the same test."""
    node = os.environ.get("PYTEST_CURRENT_TEST", "")
    if "::" not in node:
        return default
    return node.split("::")[-1].split("[")[0].split(" ")[0].removeprefix("test_")


def _key(stem: str, target, test: str) -> tuple[str, str, str, str]:
    return stem, target.backend.name, target.dtype, _current_test(test)


def record_check(stem: str, target, test: str, output: str, verdict) -> None:
    entry = _checks[_key(stem, target, test)]
    if verdict is None:
        entry["examples"] += 1
        return
    entry["examples"] += 1
    entry["worst_ratio"] = max(entry["worst_ratio"], verdict.ratio)
    entry["weak"] += int(verdict.weak)
    entry["fallback"] += int(verdict.fallback)


def record_unsupported(stem: str, target, test: str, reason: str) -> None:
    entry = _checks[_key(stem, target, test)]
    entry["unsupported"] += 1
    entry["unsupported_reason"] = reason[:200]


def record_out_of_range(stem: str, target, test: str) -> None:
    """A drawn case overflowed the dtype (its naive evaluation did): redrawn, not judged."""
    _checks[_key(stem, target, test)]["out_of_range"] += 1


def record_status(stem: str, target, test: str, status: str) -> None:
    _checks[_key(stem, target, test)]["status"] = status


def machine() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("lmspec")
    except PackageNotFoundError:
        v = "unknown"
    return {"machine": f"{platform.machine()} {platform.processor() or ''} "
                       f"{os.cpu_count()} cpus".strip(), "version": v}


def outcome_rows(outcomes: dict[tuple[str, str, str, str], str]) -> list[dict[str, Any]]:
    """Rows for the report: pytest's outcome per test joined with the numeric aggregates."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    meta = machine()
    rows = []
    for key in sorted(set(outcomes) | set(_checks)):
        stem, backend, dtype, test = key
        base = {"component": stem, "backend": backend, "dtype": dtype, "test": test,
                "time": now, **meta}
        entry = _checks.get(key, {})
        status = outcomes.get(key) or entry.get("status") or "passed"
        if entry.get("status") == "not implemented":
            status = "not implemented"
        rows.append({**base, "metric": "outcome", "value": status})
        for metric in ("examples", "worst_ratio", "weak", "fallback", "unsupported",
                       "out_of_range"):
            if metric in entry:
                rows.append({**base, "metric": metric, "value": entry[metric]})
        if entry.get("unsupported_reason"):
            rows.append({**base, "metric": "unsupported_reason",
                         "value": entry["unsupported_reason"]})
    return rows


def write(rows: list[dict[str, Any]], path: Path) -> None:
    """Atomic write: a crashed run never leaves a half-written results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    tmp.replace(path)


def read(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]
