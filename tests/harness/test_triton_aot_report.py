"""The report section of `lmspec triton-aot`: rows from a synthetic results folder, a failing
launch shown as FAIL with its reason, no section without rows; and the command's clear error
when triton is missing."""

from __future__ import annotations

import json

from lmspec.reports import triton_aot

ROWS = [
    {"kernel": "_k_fwd", "config": "BLOCK=64 [*bf16]", "arch": "sm_90", "workload": "k",
     "ok": True, "seconds": 1.25, "registers": 96, "stack_bytes": 0, "spill_bytes": 0,
     "shared_bytes": 32768, "shared_limit": 232448, "num_warps": 4},
    {"kernel": "_k_bwd", "config": "BLOCK=256 [*bf16]", "arch": "sm_80", "workload": "k",
     "ok": False, "seconds": 2.0, "registers": 255, "stack_bytes": 0, "spill_bytes": 128,
     "shared_bytes": 200000, "shared_limit": 166912, "num_warps": 8,
     "error": "needs 200000 bytes of shared memory per block; sm_80 has 166912"},
]


def test_section_shows_each_launch_and_the_failures(tmp_path):
    (tmp_path / "triton_aot.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    md, page = triton_aot.section(tmp_path, [])
    assert "1 of 2 kernel launches compiled and fit" in md
    assert "launches that spill registers to local memory: 1" in md
    assert "| sm_90 | _k_fwd | BLOCK=64 [*bf16] | ok | 96 | 0 | 32.0 (227) | 1.2 |" in md
    assert "FAIL: needs 200000 bytes of shared memory" in md and "<table>" in page


def test_no_rows_no_section(tmp_path):
    assert triton_aot.section(tmp_path, []) is None
    (tmp_path / "triton_aot.jsonl").write_text("")
    assert triton_aot.section(tmp_path, []) is None


def test_the_command_names_what_is_missing(monkeypatch, capsys):
    import importlib.util

    from lmspec.conformance import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "triton" else real(name, *a))
    assert cli.main(["triton-aot"]) == 2
    assert "triton-aot needs triton" in capsys.readouterr().err
