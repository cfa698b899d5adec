"""``lmspec bench``: run the pytest-benchmark files, turn their JSON into long-format rows with
speed ratios measured in the same run, and check the gates."""

from __future__ import annotations

import json
import os
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent / "conformance"


def run(backend_names: list[str], results: Path, components: list[str] | None = None,
        quick: bool = False) -> int:
    """Run the benchmarks, write results/bench.jsonl, print ratios; 1 if a gate fails."""
    import pytest

    try:
        import pytest_benchmark  # noqa: F401
    except ImportError:
        print("lmspec: error: benchmarks need pytest-benchmark: pip install 'lmspec[bench]'")
        return 2
    files = sorted(HERE.glob("bench_*.py"))
    if components:
        files = [f for f in files if f.stem.removeprefix("bench_") in components]
    if not files:
        print("lmspec: error: no benchmark for the selected components")
        return 2
    results.mkdir(parents=True, exist_ok=True)
    raw = results / "bench-raw.json"
    os.environ["LMSPEC_BENCH_QUICK"] = "1" if quick else "0"
    if backend_names:
        os.environ["LMSPEC_BENCH_BACKENDS"] = ",".join(backend_names)
    code = pytest.main([*map(str, files), "-q", "-p", "no:cacheprovider",
                        "--import-mode=importlib", f"--rootdir={HERE}", "-c", os.devnull,
                        "-o", "python_files=bench_*.py", f"--benchmark-json={raw}",
                        "--benchmark-columns=median,min,rounds", "--benchmark-sort=fullname"])
    if code not in (0, 1) or not raw.exists():
        return int(code) or 2
    rows = rows_from_json(json.loads(raw.read_text()), quick)
    _write(rows, results / "bench.jsonl")
    failed = print_ratios(rows)
    return 1 if (failed or code) else 0


def _shape_of(bench: dict) -> tuple[str, str]:
    params = bench.get("params") or {}
    shape = params.get("shape")
    label = shape[0] if isinstance(shape, (list, tuple)) else str(shape)
    return bench["name"].split("[")[0].removeprefix("test_"), label


def rows_from_json(data: dict, quick: bool) -> list[dict[str, Any]]:
    """Median times per (component, shape, impl), then ratios and gate verdicts."""
    from lmspec.conformance._bench import GATES

    machine = data.get("machine_info", {})
    meta = {"machine": f"{machine.get('cpu', {}).get('brand_raw', platform.processor())} "
                       f"({os.cpu_count()} cpus)", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "version": _version(), "quick": quick}
    medians: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    dtypes: dict[tuple[str, str], str] = {}  # a bench module names it ("-": dtype-free)
    rows = []
    for b in data.get("benchmarks", []):
        comp, shape = _shape_of(b)
        impl = b.get("extra_info", {}).get("impl", b["name"])
        dtype = dtypes[(comp, shape)] = b.get("extra_info", {}).get("dtype", "float32")
        metrics = b.get("extra_info", {}).get("metrics")
        if metrics:  # a measurement that is not a timing (peak bytes, MB/s): rows as given
            rows += [{"component": comp, "backend": impl, "shape": shape, "dtype": dtype,
                      "metric": name, "value": float(value), **meta}
                     for name, value in sorted(metrics.items())]
            continue
        med = float(b["stats"]["median"])
        medians[(comp, shape)][impl] = med
        # which code path the timing is of, where a backend has several (bpe_fast's core)
        path = {"core": b["extra_info"]["core"]} if "core" in b.get("extra_info", {}) else {}
        rows.append({"component": comp, "backend": impl, "shape": shape, "dtype": dtype,
                     "metric": "median_s", "value": med, **path, **meta})
    for (comp, shape), by_impl in sorted(medians.items()):
        for impl, med in sorted(by_impl.items()):
            if impl == "reference" or impl.startswith("peer:"):
                continue
            for base, base_med in sorted(by_impl.items()):
                if base == impl or not (base == "reference" or base.startswith("peer:")):
                    continue
                ratio = base_med / med  # > 1: impl is faster than base
                gate = next((g for g in GATES if g.component == comp and g.impl == impl
                             and g.baseline == base and g.shape in (None, shape)), None)
                verdict = "" if gate is None else ("PASS" if ratio >= gate.min_ratio else "FAIL")
                rows.append({"component": comp, "backend": impl, "shape": shape,
                             "dtype": dtypes[(comp, shape)],
                             "metric": f"speedup_vs_{base.removeprefix('peer:')}",
                             "value": ratio, "gate": f">= {gate.min_ratio:g}" if gate else "",
                             "verdict": verdict, **meta})
        rows += _impl_gate_rows(comp, shape, dtypes[(comp, shape)], by_impl, GATES, meta)
    return rows


def _impl_gate_rows(comp: str, shape: str, dtype: str, by_impl: dict[str, float], gates,
                    meta: dict) -> list[dict[str, Any]]:
    """Rows for gates whose baseline is another impl of ours ("impl:<label>"), at one shape of
    one component; a gate whose two impls were not both timed there gives no row."""
    rows = []
    for g in gates:
        base = g.baseline.removeprefix("impl:")
        if (g.component != comp or not g.baseline.startswith("impl:")
                or g.shape not in (None, shape) or g.impl not in by_impl or base not in by_impl):
            continue
        ratio = by_impl[base] / by_impl[g.impl]  # > 1: impl is faster than base
        rows.append({"component": comp, "backend": g.impl, "shape": shape, "dtype": dtype,
                     "metric": f"speedup_vs_{base}", "value": ratio,
                     "gate": f">= {g.min_ratio:g}",
                     "verdict": "PASS" if ratio >= g.min_ratio else "FAIL", **meta})
    return rows


def print_ratios(rows: list[dict[str, Any]]) -> bool:
    from tabulate import tabulate

    table = [[r["component"], r["backend"], r["shape"], r["metric"], f"{r['value']:.3g}",
              r["gate"], r["verdict"]] for r in rows if r["metric"].startswith("speedup_vs_")]
    print(tabulate(table, headers=["component", "backend", "shape", "ratio", "value", "gate",
                                   "verdict"]))
    quick = any(r.get("quick") for r in rows)
    failed = any(r.get("verdict") == "FAIL" for r in rows)
    if quick and failed:
        print("note: --quick shapes are too small for the gates; failures there are not final")
        return False
    return failed


def _write(rows: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lmspec")
    except PackageNotFoundError:
        return "unknown"
