"""Report generation from result rows: the matrix, failures, speed ratios; self-contained HTML."""

from __future__ import annotations

import json
import re

from lmspec.reports import render


def _row(component, backend, dtype, test, metric, value):
    return {"component": component, "backend": backend, "dtype": dtype, "test": test,
            "metric": metric, "value": value, "machine": "test", "version": "0", "time": "t"}


def test_matrix_shows_pass_fail_and_not_implemented(tmp_path):
    rows = [
        _row("sdpa", "torch_triton", "bfloat16", "forward", "outcome", "passed"),
        _row("sdpa", "torch_triton", "bfloat16", "forward", "worst_ratio", 0.42),
        _row("sdpa", "torch_triton", "bfloat16", "backward", "outcome", "failed"),
        _row("sdpa", "torch_triton", "bfloat16", "backward", "worst_ratio", 3.5),
        _row("rope", "torch_triton", "bfloat16", "forward", "outcome", "not implemented"),
        _row("rope", "reference", "float64", "forward", "outcome", "passed"),
    ]
    (tmp_path / "conformance.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = [{"component": "sdpa", "backend": "torch_triton", "shape": "T1024",
              "metric": "speedup_vs_reference", "value": 25.0, "gate": ">= 10",
              "verdict": "PASS", "machine": "m", "time": "t", "version": "0"}]
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bench))
    md_path, html_path = render.render(tmp_path)
    md = md_path.read_text()
    assert "FAIL 3.50" in md and "n/i" in md and "backward" in md
    assert "speedup_vs_reference" in md and "PASS" in md
    page = html_path.read_text()
    assert "<table>" in page and "data:image/png;base64," in page
    # self-contained: no external resources
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_not_implemented_is_never_counted_as_passed(tmp_path):
    rows = [_row("rope", "x", "float32", t, "outcome", o)
            for t, o in (("forward", "passed"), ("backward", "not implemented"))]
    comps, cols, cells = render.conformance_matrix(rows)
    assert cells[("rope", "x/float32")]["status"] == "not implemented"


def test_time_vs_t_series_and_kv_cache_plot(tmp_path):
    bench = [{"component": "linear_attention", "backend": impl, "shape": f"T{t}",
              "metric": "median_s", "value": v, "machine": "m", "time": "t", "version": "0"}
             for impl, t, v in (("sdpa/torch_triton", 1024, 0.1), ("sdpa/torch_triton", 512, 0.03),
                                ("chunked/torch_triton", 512, 0.05))]
    series = render.time_vs_t(bench)
    assert series["sdpa/torch_triton"] == [(512, 0.03), (1024, 0.1)]
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bench))
    md_path, html_path = render.render(tmp_path)
    page = html_path.read_text()
    assert "softmax vs linear" in page and "not measured" in page
    assert page.count("data:image/png;base64,") == 2  # no heatmap, no speedups: T, KV cache
    assert "not measured" in md_path.read_text()


def test_kv_cache_table_is_the_papers_arithmetic():
    rows = {r[0]: r[1] for r in render.kv_cache_table()}
    # bytes per token, 60 layers, bf16: MHA 2*128*128, GQA 2*8*128, MQA 2*128, MLA 512+64
    assert rows == {"mha": 2 * 128 * 128 * 60 * 2, "gqa": 2 * 8 * 128 * 60 * 2,
                    "mqa": 2 * 128 * 60 * 2, "mla": 576 * 60 * 2}


def test_the_coverage_section_flags_a_stated_value_drawn_short(tmp_path):
    from lmspec.reports.coverage import coverage_table

    def cov(backend, feature, value, drawn):
        return {"component": "sdpa", "backend": backend, "dtype": "float32",
                "test": "forward", "profile": "ci", "feature": feature, "value": value,
                "drawn": drawn, "judged": drawn}

    rows = [cov("a", "examples", "all", 20), cov("b", "examples", "all", 20),
            cov("a", "heads", "GQA", 6), cov("b", "heads", "GQA", 0),
            cov("a", "heads", "MHA", 8), cov("b", "heads", "MHA", 9),
            cov("a", "heads", "MQA", 6), cov("b", "heads", "MQA", 11),
            cov("a", "window", "5", 3)]
    table = {(r[0], r[1]): r for r in coverage_table(rows)["sdpa"]}
    assert table[("heads", "GQA")][2:] == ["yes, SHORT", "forward", "0 (b/float32)", 6, 6, 40]
    assert table[("heads", "MHA")][2] == "yes" and table[("window", "5")][2] == ""
    # a stated value no target drew at all is listed, and short
    assert table[("causal", "True")][2:5] == ["yes, SHORT", "forward", "0 (a/float32)"]
    (tmp_path / "coverage.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = render.render(tmp_path)[0].read_text()
    assert "## Parameter coverage" in md and "drawn short: sdpa." in md
