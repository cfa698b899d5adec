"""The tokenizer report section: MB/s from the benchmark's medians and shape labels, the serving
gate over conforming backends only, and each library's disagreements from conformance rows."""

from __future__ import annotations

import json

from lmspec.reports import render
from lmspec.reports import tokenizer as section

KIB = 1024


def _bench(component, impl, shape, median):
    return {"component": component, "backend": impl, "shape": shape, "dtype": "float32",
            "metric": "median_s", "value": median}


def _conf(backend, test, outcome, component="tokenizer", reason=None):
    base = {"component": component, "backend": backend, "dtype": "-", "test": test}
    rows = [{**base, "metric": "outcome", "value": outcome}]
    if reason:
        rows += [{**base, "metric": "unsupported", "value": 1},
                 {**base, "metric": "unsupported_reason", "value": reason}]
    return rows


BENCH = [_bench("tokenizer", "reference", "cl100k-64KiB", 0.1),
         _bench("tokenizer", "bpe_fast", "cl100k-64KiB", 0.02),
         _bench("tokenizer", "fastokens_peer", "cl100k-64KiB", 0.004),
         _bench("tokenizer", "hf_tokenizers_peer", "cl100k-64KiB", 0.008),
         _bench("tokenizer", "peer:tiktoken", "cl100k-64KiB", 0.01),
         _bench("bpe_train", "reference", "64KiB-v512", 4.0),
         _bench("bpe_train", "bpe_fast", "64KiB-v512", 0.2)]
CONF = [*_conf("bpe_fast", "round_trip", "passed"),
        *_conf("tiktoken_peer", "round_trip", "passed"),
        *_conf("fastokens_peer", "round_trip", "passed"),
        *_conf("fastokens_peer", "lone_surrogates_become_replacement_characters", "deviation"),
        *_conf("hf_tokenizers_peer", "round_trip", "passed"),
        *_conf("hf_tokenizers_peer", "decode_replaces_invalid_and_partial_utf8", "skipped",
               reason="HF tokenizers decodes with errors='replace' only"),
        *_conf("tiktoken_peer", "id_policy", "not implemented", component="bpe_train")]


def test_throughput_is_bytes_over_median_time():
    mbps = section.throughput(BENCH)
    assert mbps["cl100k-64KiB"]["bpe_fast"] == 64 * KIB / 0.02 / 1e6
    assert section.text_bytes("trained-1024KiB") == 1024 * KIB
    assert section.text_bytes("64KiB-v512") is None and section.text_bytes("T1024") is None


def test_serving_gate_takes_the_fastest_conforming_backend():
    conf = section.conformance(CONF)
    assert section.conforming(conf) == {"bpe_fast", "tiktoken_peer", "hf_tokenizers_peer"}
    (row,) = section.serving_gate(section.throughput(BENCH), conf)
    # fastokens is fastest but fails a test; HF is the fastest conforming one: 1.25x tiktoken
    assert row[1] == "hf_tokenizers_peer" and row[4] == "1.25" and row[5] == "PASS"
    assert row[6] == "fastokens_peer"
    # without HF, tiktoken itself is the fastest conforming path: serving may use it
    slow = [r for r in BENCH if r["backend"] != "hf_tokenizers_peer"]
    (row,) = section.serving_gate(section.throughput(slow), conf)
    assert row[1] == "peer:tiktoken" and row[4] == "1" and row[5] == "PASS"
    # and when tiktoken does not conform either, the next one must beat it
    worse = {b: t for b, t in conf.items() if b not in ("tiktoken_peer", "hf_tokenizers_peer")}
    (row,) = section.serving_gate(section.throughput(slow), worse)
    assert row[1] == "bpe_fast" and row[5] == "FAIL"
    (row,) = section.serving_gate(section.throughput(BENCH), {})
    assert row[5].startswith("not computed")


def test_disagreements_list_failures_with_causes_and_unsupported_reasons():
    rows = section.disagreements(section.conformance(CONF))
    assert [r[:3] for r in rows] == [
        ["fastokens_peer", "tokenizer/lone_surrogates_become_replacement_characters",
         "deviation"],
        ["hf_tokenizers_peer", "tokenizer/decode_replaces_invalid_and_partial_utf8", "skipped"]]
    assert "UnicodeEncodeError" in rows[0][3] and "errors='replace'" in rows[1][3]


def test_throughput_names_the_core_a_timing_ran_on(tmp_path):
    """bpe_fast's Python fallback must not be read as its C core: the row says which ran."""
    rows = [dict(r, core="python") if r["backend"] == "bpe_fast" else r for r in BENCH]
    assert section.cores(rows) == {"bpe_fast": "python"}
    md, _ = section.section(tmp_path, rows)
    assert "| bpe_fast (python core)" in md
    assert "(c core)" not in section.section(tmp_path, BENCH)[0]  # no core: no claim


def test_section_renders_into_the_report(tmp_path):
    (tmp_path / "conformance.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CONF))
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in BENCH))
    md, page = section.section(tmp_path, BENCH)
    assert "## Tokenizer" in md and "3.28" in md  # fastokens: 65536 B / 4 ms = 3.28 MB/s
    assert "Training time" in md and "data:image/png;base64," in page
    assert section.section(tmp_path / "empty", []) is None
    out_md, out_html = render.render(tmp_path)
    assert "## Tokenizer" in out_md.read_text() and "<h2>Tokenizer</h2>" in out_html.read_text()
