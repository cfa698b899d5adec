"""Report section: the Triton kernels compiled ahead of time for a GPU architecture, without a
GPU (``lmspec triton-aot``; backends/torch_triton/_aot.py): per kernel and launch
configuration, whether it compiled and fits the architecture's shared memory, with its
registers per thread, spilled bytes and shared memory per block as ptxas reports them."""

from __future__ import annotations

import html
from pathlib import Path

from lmspec.reports.render import html_table, md_table, read_rows

HEADERS = ["arch", "kernel", "launch configuration", "status", "registers", "spilled B",
           "shared KiB (limit)", "compile s"]
NOTE = ("Compiled by Triton to a cubin for each architecture on a machine without a GPU, at the "
        "tiles and flags the torch_triton launchers choose for CUDA tensors (realistic shapes, "
        "forward and backward). This proves the kernels compile and fit; not their speed, nor "
        "that the compiled code computes the same as the interpreter checked.")


def rows(aot_rows: list[dict]) -> list[list[str]]:
    out = []
    for r in aot_rows:
        limit = r.get("shared_limit")
        shared = "" if r.get("shared_bytes") is None else (
            f"{r['shared_bytes'] / 1024:.1f}" + (f" ({limit / 1024:.0f})" if limit else ""))
        status = "ok" if r.get("ok") else f"FAIL: {r.get('error', '?')}"
        out.append([r.get("arch", ""), r.get("kernel", ""), r.get("config", ""), status,
                    r.get("registers", ""), r.get("spill_bytes", ""), shared,
                    f"{r.get('seconds', 0.0):.1f}"])
    return sorted(out, key=lambda row: (row[0], row[1], row[2]))


def section(results: Path, bench_rows: list[dict]) -> tuple[str, str] | None:
    path = Path(results) / "triton_aot.jsonl"
    if not path.exists():
        return None
    table = rows(read_rows(path))
    if not table:
        return None
    failed = sum(not r[3] == "ok" for r in table)
    spilled = sum(1 for r in table if r[5] not in ("", 0, "0"))
    summary = (f"{len(table) - failed} of {len(table)} kernel launches compiled and fit; "
               f"launches that spill registers to local memory: {spilled}.")
    md = "\n\n".join(["## Triton kernels compiled for a GPU (no GPU run)", NOTE, summary,
                      md_table(table, HEADERS)])
    page = (f"<h2>Triton kernels compiled for a GPU (no GPU run)</h2><p>{html.escape(NOTE)}</p>"
            f"<p>{html.escape(summary)}</p>{html_table(table, HEADERS)}")
    return md, page
