"""The quantization report section: renders from a small synthetic results folder (a
conformance row), computes SQNR against bits for every format, shows quantization benchmark
rows, and is absent without quantization data."""

from __future__ import annotations

import json

from lmspec.reports import quant


def test_section_renders_the_error_vs_bits_plot_and_table(tmp_path):
    row = {"component": "quant_fp8", "backend": "reference", "dtype": "float64",
           "test": "forward", "metric": "outcome", "value": "passed"}
    (tmp_path / "conformance.jsonl").write_text(json.dumps(row) + "\n")
    bench = [{"component": "quant_matmul", "backend": "torch_triton", "shape": "M16 K4096",
              "dtype": "float32", "metric": "speedup_vs_float_matmul", "value": 1.25,
              "gate": ">= 1", "verdict": "PASS"}]
    md, body = quant.section(tmp_path, bench)
    assert "Error against bits per parameter" in md and "data:image/png;base64," in body
    assert "| mxfp4 | activation-like | 4.250 |" in md
    assert "speedup_vs_float_matmul" in body and "PASS" in body


def test_no_quantization_data_no_section(tmp_path):
    assert quant.section(tmp_path, [{"component": "sdpa", "metric": "median_s", "value": 1.0,
                                     "backend": "reference", "shape": "x"}]) is None


def test_measurements_order_the_formats_as_expected():
    rows = {(r["format"], r["tensor"]): r for r in quant.measure()}
    sqnr = {k: r["sqnr_db"] for k, r in rows.items()}
    # more bits, less error; finer groups, less error; outliers hurt coarse scales most
    assert sqnr["int8 per-row", "weight-like"] > sqnr["int4 g128", "weight-like"] + 15
    assert sqnr["int4 g32", "weight-like"] > sqnr["int4 g128", "weight-like"]
    assert sqnr["fp8 e4m3 per-row", "weight-like"] > sqnr["fp8 e5m2 per-row", "weight-like"]
    assert sqnr["fp8 e4m3 1x128", "activation-like"] > sqnr["fp8 e4m3 per-tensor",
                                                           "activation-like"]
    assert sqnr["nvfp4", "activation-like"] > sqnr["mxfp4", "activation-like"]
    assert rows["int4 g128", "weight-like"]["bits_per_param"] == 4 + 40 / 128
    assert rows["mxfp4", "weight-like"]["bits_per_param"] == 4 + 8 / 32
