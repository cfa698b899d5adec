"""Report section for MoE (issue 5): expert load before and after aux-loss-free balancing
(DeepSeek-V3's bias update on a skewed router, simulated with the reference) and the MoE layer
throughput of the benchmark rows (component "moe_layer")."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from lmspec.reports.render import html_table, md_table

STEMS = ("moe_router", "moe_balance_loss", "moe_bias_update", "moe_layer")
# The simulation: E experts, top-k sigmoid routing of N tokens a step, a fixed logit skew
# (expert 0 favoured by +SKEW, the last one -SKEW), gamma per step, STEPS steps.
E, K, N, SKEW, GAMMA, STEPS = 16, 2, 256, 1.5, 1e-2, 200


def simulate(steps: int = STEPS, seed: int = 0) -> dict[str, np.ndarray]:
    """Loads (E,) of the first and last step, the final bias, and the max/mean load per step."""
    from lmspec.reference import moe_bias_update, moe_router

    rng = np.random.default_rng(seed)
    skew = np.linspace(SKEW, -SKEW, E)
    bias = np.zeros(E)
    imbalance, first, load = [], None, np.zeros(E)
    for _ in range(steps):
        logits = rng.standard_normal((N, E)) + skew
        ids, _, _ = moe_router(logits, bias, top_k=K, score_func="sigmoid")
        load = np.bincount(ids.reshape(-1), minlength=E)
        first = load if first is None else first
        imbalance.append(load.max() / (N * K / E))
        bias = moe_bias_update(bias, ids, n_experts=E, gamma=GAMMA)
    return {"before": first, "after": load, "bias": bias, "imbalance": np.array(imbalance)}


def throughput(bench_rows: list[dict]) -> list[list[Any]]:
    """[shape, impl, median s, tokens/s] for the moe_layer benchmark (shape labels 'N<tokens>')."""
    out = []
    for r in bench_rows:
        if r.get("component") != "moe_layer" or r.get("metric") != "median_s":
            continue
        m = re.fullmatch(r"N(\d+)", str(r.get("shape", "")))
        tps = f"{int(m.group(1)) / r['value']:.4g}" if m and r["value"] > 0 else ""
        out.append([r.get("shape", ""), r["backend"], f"{r['value']:.4g}", tps])
    return sorted(out)


def speedups(bench_rows: list[dict]) -> list[list[Any]]:
    return sorted([[r.get("shape", ""), r["backend"], r["metric"], f"{r['value']:.3g}",
                    r.get("gate", ""), r.get("verdict", "")] for r in bench_rows
                   if r.get("component") == "moe_layer"
                   and str(r.get("metric", "")).startswith(("speedup_vs_", "gate"))])


def _has_moe_rows(results: Path) -> bool:
    path = Path(results) / "conformance.jsonl"
    if not path.exists():
        return False
    return any(json.loads(line).get("component") in STEMS
               for line in path.read_text().splitlines() if line.strip())


def _plot(sim: dict[str, np.ndarray]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmspec.reports.render import png

    mean = N * K / E
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(11, 3))
    for ax, key, title in ((a1, "before", "step 1 (bias 0)"),
                           (a2, "after", f"step {len(sim['imbalance'])}")):
        ax.bar(range(E), sim[key], color="#48a" if key == "after" else "#c74")
        ax.axhline(mean, color="k", lw=0.8, ls="--", label="mean N k / E")
        ax.set_title(f"expert load, {title}", fontsize=9)
        ax.set_xlabel("expert")
        ax.set_ylabel("assignments")
        ax.set_ylim(0, max(sim["before"].max(), sim["after"].max()) * 1.1)
        ax.legend(fontsize=7)
    a3.plot(np.arange(1, len(sim["imbalance"]) + 1), sim["imbalance"])
    a3.axhline(1.0, color="k", lw=0.8, ls="--")
    a3.set_xlabel("step")
    a3.set_ylabel("max load / mean load")
    a3.set_title("imbalance per step", fontsize=9)
    fig.suptitle(f"aux-loss-free balancing (moe_bias_update, gamma={GAMMA:g}) on a skewed "
                 f"sigmoid router: E={E}, top-{K}, N={N} tokens a step, logit skew "
                 f"+{SKEW:g}..-{SKEW:g} (reference, simulated)", fontsize=8)
    return png(fig)


def section(results: Path, bench_rows: list[dict]) -> tuple[str, str] | None:
    """Markdown and HTML for MoE, or None when neither MoE conformance nor benchmark rows exist."""
    tput, ratios = throughput(bench_rows), speedups(bench_rows)
    if not (tput or ratios or _has_moe_rows(results)):
        return None
    sim = simulate()
    img = _plot(sim)
    summary = (f"Expert load of a sigmoid router with a fixed logit skew, before and after "
               f"{len(sim['imbalance'])} steps of the aux-loss-free bias update (reference): "
               f"max/mean load {sim['imbalance'][0]:.2f} at step 1, "
               f"{sim['imbalance'][-1]:.2f} at the last step.")
    md = ["## Mixture of experts", "", "### Aux-loss-free balancing", "", summary, "",
          f"![expert load](data:image/png;base64,{img})", ""]
    body = ["<h2>Mixture of experts</h2>", "<h3>Aux-loss-free balancing</h3>",
            f"<p>{html.escape(summary)}</p>", f'<img src="data:image/png;base64,{img}">']
    for title, rows, headers in (
            ("MoE layer throughput (tokens/s = N / median s)", tput,
             ["shape", "impl", "median s", "tokens/s"]),
            ("MoE layer speed ratios (measured in the same run)", ratios,
             ["shape", "impl", "metric", "value", "gate", "verdict"])):
        if rows:
            md += [f"### {title}", "", md_table(rows, headers), ""]
            body += [f"<h3>{html.escape(title)}</h3>", html_table(rows, headers)]
    return "\n".join(md), "\n".join(body)
