"""Benchmark results: ratios are taken within one run, and gates read them."""

from __future__ import annotations

from lmspec.reports.bench import rows_from_json


def _bench(name, impl, median):
    return {"name": f"test_sdpa[{impl}-T1024]", "params": {"shape": ["T1024", 1, 1024, 8, 64]},
            "extra_info": {"impl": impl}, "stats": {"median": median}}


def test_speedups_and_gates_from_one_run():
    data = {"benchmarks": [_bench("sdpa", "reference", 2.0), _bench("sdpa", "torch_triton", 0.1),
                           _bench("sdpa", "peer:torch.sdpa", 0.05)]}
    rows = {r["metric"]: r for r in rows_from_json(data, quick=False)
            if r["backend"] == "torch_triton" and r["metric"].startswith("speedup")}
    ref, peer = rows["speedup_vs_reference"], rows["speedup_vs_torch.sdpa"]
    assert ref["value"] == 20.0 and ref["verdict"] == "PASS" and ref["gate"] == ">= 10"
    assert peer["value"] == 0.5 and peer["verdict"] == "FAIL" and peer["gate"] == ">= 0.8"
