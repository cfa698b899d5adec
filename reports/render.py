"""Render result rows (conformance.jsonl, bench.jsonl) as markdown and one self-contained HTML
page: the component x backend x dtype matrix, worst error ratios, speed ratios and gates."""

from __future__ import annotations

import base64
import html
import importlib
import io
import json
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

ORDER = ("failed", "deviation", "not implemented", "skipped", "passed")
SYMBOL = {"passed": "pass", "failed": "FAIL", "not implemented": "n/i", "skipped": "skip",
          "deviation": "DEV"}
COLOR = {"passed": "#d4f4d4", "failed": "#f8c8c8", "not implemented": "#e8e8e8",
         "skipped": "#f4f0d0", "deviation": "#f8dca8"}


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def conformance_matrix(rows: list[dict]) -> tuple[list[str], list[str], dict]:
    """-> (components, columns 'backend/dtype', cells[(component, column)] = summary dict)."""
    facts: dict[tuple[str, str, str, str], dict[str, Any]] = defaultdict(dict)
    for r in rows:
        facts[(r["component"], r["backend"], r["dtype"], r["test"])][r["metric"]] = r["value"]
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for (comp, backend, dtype, test), f in facts.items():
        cell = cells.setdefault((comp, f"{backend}/{dtype}"), {
            "status": "passed", "ratio": 0.0, "failed_tests": [], "deviation_tests": [],
            "tests": 0,
            "unsupported": 0, "weak": 0})
        status = f.get("outcome", "passed")
        cell["tests"] += 1
        if ORDER.index(status) < ORDER.index(cell["status"]):
            cell["status"] = status
        if status in ("failed", "deviation"):
            cell[f"{status}_tests"].append(test)
        cell["ratio"] = max(cell["ratio"], float(f.get("worst_ratio", 0.0) or 0.0))
        cell["unsupported"] += int(f.get("unsupported", 0) or 0)
        cell["weak"] += int(f.get("weak", 0) or 0)
    # a component whose every test was skipped as not implemented shows as such
    comps = sorted({c for c, _ in cells})
    cols = sorted({col for _, col in cells}, key=lambda c: (c.split("/")[0] != "reference", c))
    return comps, cols, cells


def _deviation_lines(cells: dict) -> list[str]:
    """The known deviations that reproduced, each with its reason (spec/_deviations.py)."""
    from lmspec.spec._deviations import deviation_for

    out = []
    for (comp, col), cell in sorted(cells.items()):
        backend, dtype = col.rsplit("/", 1)
        for test in cell.get("deviation_tests", []):
            dev = deviation_for(backend, comp, dtype, test)
            out.append(f"- {comp} on {col}, {test}: {dev.reason if dev else '(no entry)'}")
    return ["### Known deviations (reproduced; never counted as passed)", "", *out, ""] if out \
        else []


def _cell_text(cell: dict | None) -> str:
    if cell is None:
        return "-"
    text = SYMBOL[cell["status"]]
    if cell["status"] in ("passed", "failed") and cell["ratio"]:
        text += f" {cell['ratio']:.2f}"
    if cell["unsupported"]:
        text += f" ({cell['unsupported']} unsupported)"
    return text


def _bench_tables(rows: list[dict]) -> tuple[list[list[Any]], list[list[Any]]]:
    timings = [[r["component"], r["backend"], r.get("shape", ""), r.get("dtype", ""),
                r["value"]] for r in rows if r["metric"] == "median_s"]
    ratios = [[r["component"], r["backend"], r.get("shape", ""), r["metric"],
               f"{r['value']:.3g}", r.get("gate", ""), r.get("verdict", "")]
              for r in rows if r["metric"].startswith("speedup_vs_")]
    return timings, ratios


def _plot_ratios(comps, cols, cells) -> str:
    """Heatmap of worst error ratio (err / bound; < 1 passes) as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.full((len(comps), len(cols)), np.nan)
    for i, c in enumerate(comps):
        for j, col in enumerate(cols):
            cell = cells.get((c, col))
            if cell and cell["status"] in ("passed", "failed"):
                data[i, j] = min(cell["ratio"], 2.0)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * len(cols), 0.8 + 0.35 * len(comps)))
    im = ax.imshow(data, cmap="RdYlGn_r", vmin=0, vmax=2, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(comps)), comps, fontsize=8)
    fig.colorbar(im, ax=ax, label="worst err / bound (capped at 2; < 1 passes)")
    ax.set_title("worst error ratio per component and backend/dtype", fontsize=9)
    return _png(fig)


def _plot_speedups(rows: list[dict]) -> str | None:
    sp = [r for r in rows if r["metric"].startswith("speedup_vs_")]
    if not sp:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['component']} {r['backend']} {r['metric'][len('speedup_vs_'):]}" for r in sp]
    values = [r["value"] for r in sp]
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.28 * len(sp)))
    ax.barh(range(len(sp)), values, color=["#4a8" if r.get("verdict") != "FAIL" else "#c44"
                                            for r in sp])
    ax.set_yticks(range(len(sp)), labels, fontsize=7)
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("speedup (x), measured in the same run; > 1 is faster than the peer")
    return _png(fig)


def _shape_t(label: str) -> int | None:
    """"T4096" -> 4096; other labels -> None."""
    return int(label[1:]) if label.startswith("T") and label[1:].isdigit() else None


def time_vs_t(rows: list[dict], component: str = "linear_attention") -> dict[str, list]:
    """{impl: [(T, median s), ...] sorted by T} from the median_s rows whose shape is "T<n>"."""
    series: dict[str, list] = defaultdict(list)
    for r in rows:
        t = _shape_t(str(r.get("shape", "")))
        if r["component"] == component and r["metric"] == "median_s" and t is not None:
            series[r["backend"]].append((t, float(r["value"])))
    return {k: sorted(v) for k, v in sorted(series.items())}


def _plot_time_vs_t(rows: list[dict]) -> str | None:
    """Log-log time vs T, softmax (solid) against linear (dashed): where the lines cross."""
    series = time_vs_t(rows)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for impl, pts in series.items():
        linear = impl.split("/")[0] in ("chunked", "parallel", "recurrent")
        ax.plot(*zip(*pts), "--" if linear else "-", marker="o", ms=3, label=impl)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T (B=1, H=8, D=64, fp32, causal)")
    ax.set_ylabel("median time (s), this machine")
    ax.set_title("softmax attention (solid) vs linear attention (dashed)", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


# DeepSeek-V2-like: 60 layers, 128 heads of d_h 128, GQA 8 groups, d_c 512, d_h^R 64; bf16
def memory_table(rows: list[dict], component: str = "sdpa_memory") -> list[list[Any]]:
    """[impl, size, peak MiB] from a memory benchmark's peak_bytes rows (shapes "T<n>" for
    sdpa_memory, "V<n>" for head_ce_memory)."""
    def size(label: str) -> int | None:
        return int(label[1:]) if label[:1] in "TV" and label[1:].isdigit() else None

    out = [[r["backend"], size(r["shape"]), r["value"] / 2**20] for r in rows
           if r["component"] == component and r["metric"] == "peak_bytes"]
    return sorted(out, key=lambda r: (r[0], r[1] or 0))


def _plot_memory(rows: list[dict]) -> str | None:
    table = memory_table(rows)
    if not table:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for impl in sorted({r[0] for r in table}):
        pts = [(t, mib) for name, t, mib in table if name == impl and t]
        ax.plot([p[0] for p in pts], [max(p[1], 1e-3) for p in pts], marker="o", label=impl)
    ax.set(xscale="log", yscale="log", xlabel="sequence length T",
           ylabel="peak memory growth (MiB)", title="causal attention: peak memory per call")
    ax.legend(fontsize=8)
    return _png(fig)


KV_CONFIG = {"n_layers": 60, "n_heads": 128, "head_dim": 128, "bytes_per_element": 2}
KV_EXTRA = {"gqa": {"n_kv_heads": 8}, "mla": {"kv_lora_rank": 512, "qk_rope_head_dim": 64}}
KV_CONTEXTS = (1024, 4096, 16384, 32768, 65536, 131072)


def kv_cache_table() -> list[list[Any]]:
    """[kind, bytes per token, GiB at each KV_CONTEXTS]: arithmetic from the mla spec."""
    from lmspec.spec.mla import KV_KINDS, kv_cache_size

    table = []
    for kind in KV_KINDS:
        size = kv_cache_size(kind, **KV_CONFIG, **KV_EXTRA.get(kind, {}))
        table.append([kind, size.bytes_per_token, *(size.bytes_for(KV_CONTEXTS) / 2**30)])
    return table


def _plot_kv_cache() -> str:
    """KV-cache bytes per token (bars) and total bytes vs context (log-log), MHA/GQA/MQA/MLA."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = kv_cache_table()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
    a1.bar([r[0] for r in table], [r[1] / 1024 for r in table], color="#48a")
    a1.set_yscale("log")
    a1.set_ylabel("KiB per token (all layers)")
    for r in table:
        a2.plot(KV_CONTEXTS, r[2:], marker="o", ms=3, label=r[0])
    a2.set_xscale("log", base=2)
    a2.set_yscale("log")
    a2.set_xlabel("context length (tokens, batch 1)")
    a2.set_ylabel("KV cache (GiB)")
    a2.legend(fontsize=7)
    fig.suptitle("KV cache, DeepSeek-V2-like config, bf16: computed from "
                 "lmspec.spec.mla.kv_cache_size (not measured)", fontsize=8)
    return _png(fig)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    with warnings.catch_warnings():  # tight_layout warns on long labels; the page is still fine
        warnings.simplefilter("ignore")
        fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _markdown(comps, cols, cells, bench_rows, meta) -> str:
    from tabulate import tabulate

    lines = ["# lmspec report", "", f"Machine: {meta.get('machine', '?')}; lmspec "
             f"{meta.get('version', '?')}; generated from result rows at {meta.get('time', '?')}.",
             "", "## Conformance", "",
             "Cell: outcome and worst error ratio (error / tolerance bound; below 1 passes). "
             "`n/i`: not implemented (never counted as a pass).", ""]
    if comps:
        table = [[c] + [_cell_text(cells.get((c, col))) for col in cols] for c in comps]
        lines.append(tabulate(table, headers=["component", *cols], tablefmt="github"))
        totals = defaultdict(int)
        for cell in cells.values():
            totals[cell["status"]] += 1
        lines += ["", "Totals: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())), ""]
        failures = [(c, col, cell["failed_tests"]) for (c, col), cell in sorted(cells.items())
                    if cell["failed_tests"]]
        if failures:
            lines += ["### Failures", ""] + [f"- {c} on {col}: {', '.join(t)}"
                                             for c, col, t in failures] + [""]
        lines += _deviation_lines(cells)
    else:
        lines.append("No conformance results.")
    timings, ratios = _bench_tables(bench_rows)
    if ratios:
        lines += ["## Speed (ratios measured in the same run)", "",
                  tabulate(ratios, headers=["component", "backend", "shape", "ratio", "value",
                                            "gate", "verdict"], tablefmt="github"), ""]
    if timings:
        lines += ["### Median times (s, this machine)", "",
                  tabulate(timings, headers=["component", "impl", "shape", "dtype", "median s"],
                           tablefmt="github", floatfmt=".3g"), ""]
    if memory := memory_table(bench_rows):
        lines += ["## Peak memory of causal attention (measured: growth of the peak RSS over "
                  "one call, B=1, H=8, D=64, float32)", "",
                  tabulate(memory, headers=["impl", "T", "peak MiB"], tablefmt="github",
                           floatfmt=".4g"), ""]
    if memory := memory_table(bench_rows, "head_ce_memory"):
        lines += ["## Peak memory of the LM head's loss and gradients (measured: materialized "
                  "logits vs fused in row chunks, N=2048, d=256, float32; --quick: N=512, "
                  "d=64)", "",
                  tabulate(memory, headers=["impl", "V", "peak MiB"], tablefmt="github",
                           floatfmt=".4g"), ""]
    lines += ["## KV cache by attention kind (computed from the spec, not measured)", "",
              "DeepSeek-V2-like: 60 layers, 128 heads, d_h 128, GQA 8 groups, MLA d_c 512, "
              "d_h^R 64, bf16; batch 1.", "",
              tabulate(kv_cache_table(), headers=["kind", "bytes/token",
                                                  *(f"GiB @{c}" for c in KV_CONTEXTS)],
                       tablefmt="github", floatfmt=".4g"), ""]
    return "\n".join(lines) + "\n"


def _html(md_comps, cols, cells, bench_rows, meta, heat_png, speed_png,
          extra_pngs: tuple[tuple[str, str | None], ...] = ()) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = []
    for comp in md_comps:
        tds = []
        for col in cols:
            cell = cells.get((comp, col))
            color = COLOR.get(cell["status"], "#fff") if cell else "#fff"
            title = esc(", ".join(cell["failed_tests"])) if cell else ""
            tds.append(f'<td style="background:{color}" title="{title}">'
                       f"{esc(_cell_text(cell))}</td>")
        body.append(f"<tr><th>{esc(comp)}</th>{''.join(tds)}</tr>")
    _, ratios = _bench_tables(bench_rows)
    bench_html = ""
    if ratios:
        rows = "".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in r) + "</tr>"
                       for r in ratios)
        bench_html = ("<h2>Speed (ratios measured in the same run)</h2><table><tr><th>component"
                      "</th><th>backend</th><th>shape</th><th>ratio</th><th>value</th><th>gate"
                      f"</th><th>verdict</th></tr>{rows}</table>")
        if speed_png:
            bench_html += f'<p><img alt="speedups" src="data:image/png;base64,{speed_png}"></p>'
    for title, png in extra_pngs:
        if png:
            bench_html += (f"<h2>{esc(title)}</h2><p><img alt=\"{esc(title)}\" "
                           f'src="data:image/png;base64,{png}"></p>')
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>lmspec report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:3px 6px;font-size:12px}}</style></head><body>
<h1>lmspec report</h1><p>Machine: {esc(str(meta.get('machine', '?')))}; lmspec
{esc(str(meta.get('version', '?')))}; results from {esc(str(meta.get('time', '?')))}.</p>
<h2>Conformance</h2><p>Cell: outcome and worst error ratio (error / bound; below 1 passes);
n/i = not implemented, never counted as a pass. Hover a failing cell for its tests.</p>
<table><tr><th>component</th>{head}</tr>{''.join(body)}</table>
{f'<p><img alt="error ratios" src="data:image/png;base64,{heat_png}"></p>' if heat_png else ''}
{bench_html}</body></html>
"""


# Topic sections (tokenizer, MoE, quantization): a module ``lmspec.reports.<name>`` with
# ``section(results: Path, bench_rows: list[dict]) -> tuple[str, str] | None`` giving a markdown
# and an HTML fragment (plots inlined as base64 PNG through ``png``), or None when it has no data.
SECTIONS = ("tokenizer", "moe", "quant", "triton_aot", "plants", "coverage")
png = _png
read_rows = _read


def md_table(rows: list[list[Any]], headers: list[str]) -> str:
    """A plain markdown table (the sections' own tables; cells as str())."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def html_table(rows: list[list[Any]], headers: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _sections(results: Path, bench_rows: list[dict]) -> list[tuple[str, str]]:
    out = []
    for name in SECTIONS:
        try:
            mod = importlib.import_module(f"lmspec.reports.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"lmspec.reports.{name}":
                raise
            continue
        got = mod.section(results, bench_rows)
        if got:
            out.append(got)
    return out


def render(results: Path, runs: list[Path] | None = None) -> list[Path]:
    """Write report.md and report.html into ``results``; returns their paths. ``runs``:
    training and alignment run folders whose curves the report plots (reports/runs.py)."""
    results = Path(results)
    conf = _read(results / "conformance.jsonl")
    bench_rows = _read(results / "bench.jsonl")
    meta = (conf or bench_rows or [{}])[0]
    comps, cols, cells = conformance_matrix(conf)
    md = _markdown(comps, cols, cells, bench_rows, meta)
    heat = _plot_ratios(comps, cols, cells) if comps else None
    extra = (("Time vs sequence length: softmax vs linear attention",
              _plot_time_vs_t(bench_rows)),
             ("Peak memory of causal attention: materialized scores vs tiled (measured)",
              _plot_memory(bench_rows)),
             ("KV cache by attention kind (computed from the spec, not measured)",
              _plot_kv_cache()))
    page = _html(comps, cols, cells, bench_rows, meta, heat, _plot_speedups(bench_rows), extra)
    from lmspec.reports import runs as runs_section

    with_runs = runs_section.section(list(runs or []))
    for section_md, section_html in _sections(results, bench_rows) + [with_runs] * bool(
            with_runs):
        md += "\n" + section_md.rstrip() + "\n"
        page = page.replace("</body></html>", section_html + "</body></html>")
    out_md, out_html = results / "report.md", results / "report.html"
    for path, text in ((out_md, md), (out_html, page)):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return [out_md, out_html]
