"""Report section for the tokenizer (issue 3): encode throughput (MB/s) and training times from
the benchmark rows, the serving gate, and each library's disagreements with the spec from the
conformance rows."""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path
from typing import Any

from lmspec.reports.render import read_rows
from lmspec.spec._deviations import deviation_for

STEMS = ("tokenizer", "bpe_train")
BASELINE = "peer:tiktoken"  # the serving gate's baseline (the bench's label for tiktoken_peer)
NOT_SERVING = ("reference",)  # the oracle serves nobody; tiktoken is a serving candidate too

def text_bytes(shape: str) -> int | None:
    """The bytes encoded per call at a shape label of conformance/bench_tokenizer.py
    (``cl100k-1024KiB`` -> 1048576; None: not such a label)."""
    size = shape.rsplit("-", 1)[-1]
    digits = size.removesuffix("KiB")
    return int(digits) * 1024 if size.endswith("KiB") and digits.isdigit() else None


def throughput(bench_rows: list[dict]) -> dict[str, dict[str, float]]:
    """{shape: {impl: MB/s}} (MB = 10**6 bytes) from the tokenizer's median_s rows."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for r in bench_rows:
        if r["component"] == "tokenizer" and r["metric"] == "median_s":
            n = text_bytes(str(r.get("shape", "")))
            if n and r["value"] > 0:
                out[r["shape"]][r["backend"]] = n / r["value"] / 1e6
    return dict(out)


def cores(bench_rows: list[dict]) -> dict[str, str]:
    """{impl: the core its encode timings ran on} (bpe_fast: "c", or "python" where its C core
    was not built), so that the table never passes one path's figures off as the other's."""
    return {r["backend"]: str(r["core"]) for r in bench_rows
            if r.get("component") == "tokenizer" and r.get("metric") == "median_s"
            and "core" in r}


def train_times(bench_rows: list[dict]) -> dict[str, dict[str, float]]:
    """{shape: {impl: median seconds}} of the bpe_train benchmark."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for r in bench_rows:
        if r["component"] == "bpe_train" and r["metric"] == "median_s":
            out[r["shape"]][r["backend"]] = float(r["value"])
    return dict(out)


def conformance(conf_rows: list[dict]) -> dict[str, dict[str, dict[str, Any]]]:
    """{backend: {"stem/test": {"outcome": ..., "reason": ...}}} for the tokenizer stems."""
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in conf_rows:
        if r["component"] not in STEMS:
            continue
        cell = out[r["backend"]].setdefault(f"{r['component']}/{r['test']}", {})
        if r["metric"] == "outcome":
            cell["outcome"] = r["value"]
        elif r["metric"] == "unsupported_reason":
            cell["reason"] = r["value"]
        elif r["metric"] == "unsupported" and r["value"]:
            cell["unsupported"] = int(r["value"])
    return dict(out)


FAILING = ("failed", "deviation")  # a known deviation (spec/_deviations.py) still disagrees


def conforming(conf: dict[str, dict[str, dict[str, Any]]]) -> set[str]:
    """Backends with at least one passed tokenizer test and none failed or deviating."""
    return {b for b, tests in conf.items()
            if any(t.get("outcome") == "passed" for k, t in tests.items()
                   if k.startswith("tokenizer/"))
            and not any(t.get("outcome") in FAILING for k, t in tests.items()
                        if k.startswith("tokenizer/"))}


def serving_gate(mbps: dict[str, dict[str, float]], conf: dict) -> list[list[Any]]:
    """Issue 3's serving gate, per vocabulary: the fastest backend that passes the tokenizer
    conformance (any but the reference: serving may use a conforming library) must encode at
    least as fast as tiktoken single-threaded. Rows [shape, serving backend, its MB/s, tiktoken
    MB/s, ratio, verdict, faster backends that fail conformance]; the verdict needs conformance
    rows for the tokenizer in the same results folder."""
    ok = conforming(conf)
    if "tiktoken_peer" in ok:  # the bench times tiktoken_peer under the peer's label
        ok.add(BASELINE)
    rows = []
    for shape, by_impl in sorted(mbps.items()):
        if BASELINE not in by_impl:
            continue
        if not conf:
            rows.append([shape, "?", "", f"{by_impl[BASELINE]:.3g}", "",
                         "not computed: no tokenizer conformance rows", ""])
            continue
        cands = {i: v for i, v in by_impl.items() if i not in NOT_SERVING and i in ok}
        if not cands:
            rows.append([shape, "none conforms", "", f"{by_impl[BASELINE]:.3g}", "", "FAIL",
                         ""])
            continue
        best = max(cands, key=cands.get)
        ratio = cands[best] / by_impl[BASELINE]
        faster = [i for i, v in sorted(by_impl.items())
                  if v > cands[best] and i not in NOT_SERVING and i not in ok]
        rows.append([shape, best, f"{cands[best]:.3g}", f"{by_impl[BASELINE]:.3g}",
                     f"{ratio:.3g}", "PASS" if ratio >= 1.0 else "FAIL", ", ".join(faster)])
    return rows


def disagreements(conf: dict) -> list[list[str]]:
    """[backend, stem/test, outcome, cause] for every test failed or skipped (with the adapter's
    NotImplementedError reason), or passed with unsupported calls; a stem a backend does not
    implement at all is left to the conformance matrix."""
    out = []
    for backend, tests in sorted(conf.items()):
        for key, t in sorted(tests.items()):
            outcome = t.get("outcome", "passed")
            if outcome == "not implemented" or (outcome == "passed" and not t.get("unsupported")):
                continue
            shown = outcome if outcome != "passed" else f"passed ({t['unsupported']} unsupported)"
            dev = deviation_for(backend, key.split("/", 1)[0], "-", key.split("/", 1)[1])
            cause = dev.reason if dev else ""
            why = (cause or t.get("reason", "")) if outcome in FAILING else t.get("reason", "")
            out.append([backend, key, shown, why])
    return out


def _plot(mbps: dict[str, dict[str, float]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmspec.reports.render import png

    shapes = sorted(mbps)
    impls = sorted({i for v in mbps.values() for i in v})
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.3 * len(impls) * len(shapes)))
    width = 0.8 / max(len(shapes), 1)
    for k, shape in enumerate(shapes):
        ys = [j + k * width for j in range(len(impls))]
        ax.barh(ys, [mbps[shape].get(i, 0.0) for i in impls], height=width, label=shape)
    ax.set_yticks([j + 0.4 - width / 2 for j in range(len(impls))], impls, fontsize=8)
    ax.set_xlabel("encode throughput, MB/s (single-threaded, this machine)")
    ax.legend(fontsize=7)
    return png(fig)


def _md_table(rows: list[list[Any]], headers: list[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github", floatfmt=".3g")


def _html_table(rows: list[list[Any]], headers: list[str]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(_fmt(v))}</td>" for v in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def section(results: Path, bench_rows: list[dict]) -> tuple[str, str] | None:
    """Markdown and HTML for the tokenizer, or None when there is no tokenizer data."""
    conf = conformance(read_rows(Path(results) / "conformance.jsonl"))
    mbps, train = throughput(bench_rows), train_times(bench_rows)
    if not (conf or mbps or train):
        return None
    parts: list[tuple[str, list[list[Any]], list[str]]] = []
    impls = sorted({i for v in mbps.values() for i in v})
    core = cores(bench_rows)
    if mbps:
        parts.append(("Encode throughput (MB/s = 10^6 bytes / median s; fresh object and "
                      "unseen text per round, single-threaded)",
                      [[f"{i} ({core[i]} core)" if i in core else i,
                        *(mbps[s].get(i, "") for s in sorted(mbps))] for i in impls],
                      ["impl", *sorted(mbps)]))
        parts.append(("Serving gate: the fastest conforming backend (the reference "
                      "excluded) >= tiktoken", serving_gate(mbps, conf),
                      ["shape", "serving backend", "MB/s", "tiktoken MB/s", "ratio",
                       "verdict (>= 1)", "faster, not conforming"]))
    if train:
        parts.append(("Training time (median s)",
                      [[i, *(train[s].get(i, "") for s in sorted(train))]
                       for i in sorted({i for v in train.values() for i in v})],
                      ["impl", *sorted(train)]))
    if conf:
        parts.append(("Disagreements with the spec (tests not passed; unsupported calls "
                      "raise NotImplementedError in the adapter)", disagreements(conf),
                      ["backend", "test", "outcome", "reason / known cause"]))
    md = ["## Tokenizer", ""]
    body = ["<h2>Tokenizer</h2>"]
    for title, rows, headers in parts:
        md += [f"### {title}", "", _md_table(rows, headers) if rows else "(none)", ""]
        body += [f"<h3>{html.escape(title)}</h3>",
                 _html_table(rows, headers) if rows else "<p>(none)</p>"]
    if mbps:
        body.append(f'<p><img alt="tokenizer throughput" '
                    f'src="data:image/png;base64,{_plot(mbps)}"></p>')
    return "\n".join(md) + "\n", "\n".join(body)
