"""Report section for quantization (issue 6): error against bits per parameter of every format,
computed with the reference on seeded weight-like and activation-like tensors (SQNR and max
error are computed, not timed), plus the quantization benchmark rows where there are any."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lmspec.reports.render import html_table, md_table

STEMS = ("quant_int8", "quant_int4", "quant_fp8", "quant_fp4", "quant_matmul", "gptq", "awq",
         "quant_kv_cache")
# The tensors: R rows of D; weights N(0, 0.02^2); activations N(0, 1) with OUTLIERS channels
# (columns) scaled by 100, the LLM.int8() pattern that breaks per-tensor scales.
R, D, OUTLIERS, OUTLIER_SCALE, SEED = 128, 1024, 8, 100.0, 0


def tensors(seed: int = SEED) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((R, D)) * 0.02
    x = rng.standard_normal((R, D))
    x[:, rng.choice(D, OUTLIERS, replace=False)] *= OUTLIER_SCALE
    return {"weight-like": w, "activation-like": x}


def _formats() -> dict[str, Callable[[np.ndarray], tuple[np.ndarray, tuple]]]:
    """name -> x -> (dequantized x, the arrays stored: codes, scales, ...)."""
    from lmspec import reference as Rf

    def int8(x):
        c, s = Rf.quant_int8(x, axis=-1)
        return Rf.dequant_int8(c, s, -1), (c, s)

    def int4(g):
        def run(x):
            p, s, z = Rf.quant_int4(x, group_size=g)
            return Rf.dequant_int4(p, s, z, g), (p, s, z)
        return run

    def fp8(fmt, granularity, pow2=False):
        def run(x):
            c, s = Rf.quant_fp8(x, fmt=fmt, granularity=granularity, pow2_scale=pow2)
            return Rf.dequant_fp8(c, s, fmt, granularity), (c, s)
        return run

    def fp4(fmt):
        def run(x):
            c, s, t = Rf.quant_fp4(x, fmt=fmt)  # t is 1 (not stored) except for nvfp4
            return Rf.dequant_fp4(c, s, t, fmt), (c, s, t) if fmt == "nvfp4" else (c, s)
        return run

    def bf16(x):
        import ml_dtypes

        c = x.astype(ml_dtypes.bfloat16)
        return c.astype(np.float64), (c,)

    return {"bfloat16 (cast)": bf16, "int8 per-row": int8, "int4 g128": int4(128),
            "int4 g32": int4(32), "fp8 e4m3 per-tensor": fp8("e4m3", "tensor"),
            "fp8 e4m3 per-row": fp8("e4m3", "token"), "fp8 e4m3 1x128": fp8("e4m3", "tile"),
            "fp8 e4m3 1x128 pow2": fp8("e4m3", "tile", True),
            "fp8 e4m3 128x128": fp8("e4m3", "block"), "fp8 e5m2 per-row": fp8("e5m2", "token"),
            "fp4 e2m1 per-tensor": fp4("e2m1"), "mxfp4": fp4("mxfp4"), "nvfp4": fp4("nvfp4")}


def sqnr_db(x: np.ndarray, xq: np.ndarray) -> float:
    """10 log10(sum x^2 / sum (x - xq)^2): signal to quantization-noise ratio."""
    noise = float(np.sum((x - xq) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(x * x)) / noise)


def measure(seed: int = SEED) -> list[dict[str, Any]]:
    """One row per (format, tensor): bits per parameter (codes and every scale stored),
    SQNR in dB, max |error|, and max |x| for scale."""
    rows = []
    for tname, x in tensors(seed).items():
        for fname, run in _formats().items():
            xq, stored = run(x)
            bits = 8 * sum(np.asarray(a).nbytes for a in stored) / x.size
            rows.append({"format": fname, "tensor": tname, "bits_per_param": bits,
                         "sqnr_db": sqnr_db(x, xq), "max_abs_err": float(np.abs(x - xq).max()),
                         "max_abs": float(np.abs(x).max())})
    return rows


def _has_quant_rows(results: Path, bench_rows: list[dict]) -> bool:
    if any(r.get("component") in STEMS for r in bench_rows):
        return True
    path = Path(results) / "conformance.jsonl"
    return path.exists() and any(json.loads(line).get("component") in STEMS
                                 for line in path.read_text().splitlines() if line.strip())


def _plot(rows: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmspec.reports.render import png

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, tname in zip(axes, ("weight-like", "activation-like")):
        sel = [r for r in rows if r["tensor"] == tname]
        ax.scatter([r["bits_per_param"] for r in sel], [r["sqnr_db"] for r in sel], s=14)
        for r in sel:
            ax.annotate(r["format"], (r["bits_per_param"], r["sqnr_db"]), fontsize=6,
                        xytext=(3, 2), textcoords="offset points")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bits per parameter (codes + scales)")
        ax.set_title(tname, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("SQNR (dB)")
    fig.suptitle(f"quantization error vs bits ({R} x {D}; weights N(0, 0.02^2); activations "
                 f"N(0, 1) with {OUTLIERS} channels x{OUTLIER_SCALE:g}; reference, computed)",
                 fontsize=8)
    return png(fig)


def _bench_table(bench_rows: list[dict]) -> list[list[Any]]:
    return sorted([[r["component"], r.get("shape", ""), r.get("backend", ""), r.get("metric", ""),
                    f"{r['value']:.4g}" if isinstance(r.get("value"), (int, float)) else
                    r.get("value", ""), r.get("gate", ""), r.get("verdict", "")]
                   for r in bench_rows if r.get("component") in STEMS])


def section(results: Path, bench_rows: list[dict]) -> tuple[str, str] | None:
    """Markdown and HTML for quantization, or None without quantization conformance or
    benchmark rows."""
    if not _has_quant_rows(results, bench_rows):
        return None
    rows = measure()
    img = _plot(rows)
    table = [[r["format"], r["tensor"], f"{r['bits_per_param']:.3f}",
              f"{r['bits_per_param'] / 8:.4f}", f"{r['sqnr_db']:.1f}",
              f"{r['max_abs_err']:.3g}"] for r in rows]
    headers = ["format", "tensor", "bits/param", "bytes/param", "SQNR dB", "max |err|"]
    note = ("Computed with the reference (seeded, deterministic): every stored array counts "
            "toward bits per parameter (codes, scales, zero points, tensor scales). "
            "Activations carry outlier channels, which per-tensor and per-row scales feel and "
            "1x128 tiles and 32/16-element blocks mostly confine.")
    md = ["## Quantization", "", "### Error against bits per parameter", "", note, "",
          f"![SQNR vs bits](data:image/png;base64,{img})", "", md_table(table, headers), ""]
    body = ["<h2>Quantization</h2>", "<h3>Error against bits per parameter</h3>",
            f"<p>{html.escape(note)}</p>", f'<img src="data:image/png;base64,{img}">',
            html_table(table, headers)]
    bench = _bench_table(bench_rows)
    if bench:
        headers = ["component", "shape", "impl", "metric", "value", "gate", "verdict"]
        title = "Quantization benchmarks (measured; ratios from the same run)"
        md += [f"### {title}", "", md_table(bench, headers), ""]
        body += [f"<h3>{html.escape(title)}</h3>", html_table(bench, headers)]
    return "\n".join(md), "\n".join(body)
