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


def _la(impl, t, median):
    return {"name": f"test_linear_attention[{impl}-T{t}]",
            "params": {"shape": [f"T{t}", 1, t, 8, 64]}, "extra_info": {"impl": impl},
            "stats": {"median": median}}


def test_gate_with_another_impl_as_baseline():
    data = {"benchmarks": [_la("sdpa/torch_triton", 16384, 6.0),
                           _la("chunked/torch_triton", 16384, 1.5),
                           _la("sdpa/torch_triton", 512, 0.01),
                           _la("chunked/torch_triton", 512, 0.02)]}
    rows = [r for r in rows_from_json(data, quick=False) if r["metric"].startswith("speedup")]
    # one row, at the gate's shape only: ratios compare like with like
    (row,) = rows
    assert row["shape"] == "T16384" and row["metric"] == "speedup_vs_sdpa/torch_triton"
    assert row["value"] == 4.0 and row["verdict"] == "PASS" and row["gate"] == ">= 3"


def test_impl_gate_fails_below_ratio_and_needs_both_impls():
    data = {"benchmarks": [_la("sdpa/torch_triton", 16384, 2.0),
                           _la("chunked/torch_triton", 16384, 1.0)]}
    (row,) = [r for r in rows_from_json(data, quick=False) if r["metric"].startswith("speedup")]
    assert row["value"] == 2.0 and row["verdict"] == "FAIL"
    data = {"benchmarks": [_la("chunked/torch_triton", 16384, 1.0)]}
    assert not [r for r in rows_from_json(data, quick=False) if "gate" in r]


def test_measurements_that_are_not_timings_become_rows_of_their_own():
    """The sdpa_memory benchmark records peak bytes; its (meaningless) timing gives no row, and
    the report's memory table reads the bytes back per impl and T."""
    from lmspec.reports.render import memory_table

    data = {"benchmarks": [{"name": f"test_sdpa_memory[{impl}-T{t}]",
                            "params": {"shape": [f"T{t}", t]},
                            "extra_info": {"impl": impl, "metrics": {"peak_bytes": mib * 2**20}},
                            "stats": {"median": 1e-6}}
                           for impl, t, mib in (("materialized/torch", 1024, 128.0),
                                                ("torch_triton", 1024, 2.0))]}
    rows = rows_from_json(data, quick=False)
    assert {(r["metric"], r["backend"]) for r in rows} == {
        ("peak_bytes", "materialized/torch"), ("peak_bytes", "torch_triton")}
    assert memory_table(rows) == [["materialized/torch", 1024, 128.0], ["torch_triton", 1024, 2.0]]
    for r in rows:
        r["component"], r["shape"] = "head_ce_memory", "V32768"
    assert memory_table(rows, "head_ce_memory") == [["materialized/torch", 32768, 128.0],
                                                    ["torch_triton", 32768, 2.0]]
    assert memory_table(rows) == []


def test_a_dtype_free_benchmark_says_so_in_every_row():
    """The tokenizer's rows are not float32: the bench module names the dtype ("-")."""
    def tok(impl, median):
        return {"name": f"test_tokenizer[{impl}-cl100k-1024KiB]",
                "params": {"shape": ["cl100k-1024KiB", "cl100k", 1 << 20]},
                "extra_info": {"impl": impl, "dtype": "-"}, "stats": {"median": median}}

    rows = rows_from_json({"benchmarks": [tok("reference", 0.4), tok("bpe_fast", 0.05)]},
                          quick=False)
    assert not any("core" in r for r in rows)  # a timing says its core only when told
    told = tok("bpe_fast", 0.05)
    told["extra_info"]["core"] = "python"
    (row,) = rows_from_json({"benchmarks": [told]}, quick=False)
    assert row["core"] == "python"
    assert {r["metric"] for r in rows} == {"median_s", "speedup_vs_reference"}
    assert {r["dtype"] for r in rows} == {"-"}
    assert rows_from_json({"benchmarks": [_bench("sdpa", "reference", 2.0)]},
                          quick=False)[0]["dtype"] == "float32"  # the default, for the rest


def test_model_gates_read_the_dense_config_against_transformers():
    """bench_model: torch_triton is gated against HF at the dense shapes only; jax_xla and the
    MoE config are reported; a compile time is a row of its own, not a timing."""
    def model(impl, shape, median, metrics=None):
        extra = {"impl": impl, **({"metrics": metrics} if metrics else {})}
        return {"name": f"test_model[{impl}-{shape}]", "params": {"shape": [shape, shape[:3]]},
                "extra_info": extra, "stats": {"median": median}}

    data = {"benchmarks": [
        model("jax_xla", "dense-fwd-N1024", 1e-6, {"compile_s": 0.6}),
        *(model(i, s, m) for s in ("dense-fwd-N1024", "moe-fwd-N1024")
          for i, m in (("torch_triton", 0.05), ("jax_xla", 0.08), ("peer:transformers", 0.06)))]}
    rows = rows_from_json(data, quick=False)
    gated = {(r["backend"], r["shape"]): r["verdict"] for r in rows if r.get("gate")}
    assert gated == {("torch_triton", "dense-fwd-N1024"): "PASS"}
    speedups = {(r["backend"], r["shape"]) for r in rows
                if r["metric"] == "speedup_vs_transformers"}
    assert ("jax_xla", "dense-fwd-N1024") in speedups and ("jax_xla", "moe-fwd-N1024") in speedups
    (compile_row,) = [r for r in rows if r["metric"] == "compile_s"]
    assert compile_row["backend"] == "jax_xla" and compile_row["value"] == 0.6
