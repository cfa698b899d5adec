"""The MoE report section: renders from a small synthetic results folder, shows the balancing
histograms and the moe_layer throughput rows, and is absent without MoE data."""

from __future__ import annotations

import json

from lmspec.reports import moe


def _bench(impl, shape, median, metric="median_s"):
    return {"component": "moe_layer", "backend": impl, "shape": shape, "dtype": "float32",
            "metric": metric, "value": median}


def test_section_renders_histograms_and_throughput(tmp_path):
    bench = [_bench("torch_triton", "N256", 0.01), _bench("loop", "N256", 0.05),
             {**_bench("torch_triton", "N256", 5.0, "speedup_vs_loop"), "gate": ">= 3",
              "verdict": "PASS"}]
    md, body = moe.section(tmp_path, bench)
    assert "Aux-loss-free balancing" in md and "data:image/png;base64," in body
    assert "| N256 | torch_triton | 0.01 | 2.56e+04 |" in md
    assert "speedup_vs_loop" in body and "PASS" in body


def test_section_from_conformance_rows_only(tmp_path):
    row = {"component": "moe_router", "backend": "reference", "dtype": "float64",
           "test": "forward", "metric": "outcome", "value": "passed"}
    (tmp_path / "conformance.jsonl").write_text(json.dumps(row) + "\n")
    md, _ = moe.section(tmp_path, [])
    assert "max/mean load" in md and "throughput" not in md


def test_no_moe_data_no_section(tmp_path):
    assert moe.section(tmp_path, [{"component": "sdpa", "metric": "median_s", "value": 1.0,
                                   "backend": "reference", "shape": "x"}]) is None


def test_balancing_brings_the_load_toward_the_mean():
    sim = moe.simulate(steps=120)
    assert sim["imbalance"][0] > 2.5 and sim["imbalance"][-1] < 1.6
