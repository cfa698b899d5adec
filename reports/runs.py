"""Report section for training and alignment runs (``lmspec report --runs DIR ...``): the
curves of each run's ``metrics.jsonl`` (train and validation loss of ``lmspec train``; the
reward, exact-match rate and preference accuracies of ``lmspec align``) and a table of the
first and last value of each curve."""

from __future__ import annotations

import html
import json
from pathlib import Path

from lmspec.reports.render import html_table, md_table

# (split, metric) curves worth plotting, in this order; the rest stay in metrics.jsonl
CURVES = (("train", "loss"), ("valid", "loss"), ("train", "reward"), ("valid", "reward"),
          ("valid", "exact"), ("valid", "reward_accuracy"), ("valid", "policy_accuracy"))


def curves(run: Path) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    """{(split, metric): (steps, values)} of a run folder, for the metrics in CURVES."""
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"runs: {run} has no metrics.jsonl (expected the folder of "
                                "an `lmspec train` or `lmspec align` run)")
    out: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        key = (r["split"], r["metric"])
        if key in CURVES:
            steps, values = out.setdefault(key, ([], []))
            steps.append(int(r["step"]))
            values.append(float(r["value"]))
    return {k: out[k] for k in CURVES if k in out}


def _title(run: Path) -> str:
    info = Path(run) / "run.json"
    if info.exists():
        d = json.loads(info.read_text())
        if "align" in d:
            a = d["align"]
            return f"{run.name}: align {a['stage']} on {a['task']} ({a['backend']})"
        if "run" in d:
            return f"{run.name}: train {d['run']['model']} ({d['run']['backend']})"
    return run.name


def _plot(run: Path, cs: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmspec.reports.render import _png

    loss = {k: v for k, v in cs.items() if k[1] == "loss"}
    rest = {k: v for k, v in cs.items() if k[1] != "loss"}
    panels = [p for p in (loss, rest) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for (split, metric), (steps, values) in panel.items():
            ax.plot(steps, values, marker="." if len(steps) < 30 else None,
                    label=f"{split} {metric}")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(_title(run), fontsize=8)
    return _png(fig)


def section(runs: list[Path]) -> tuple[str, str] | None:
    """Markdown and HTML for the runs, or None without any."""
    if not runs:
        return None
    md, body = ["## Training and alignment runs", ""], ["<h2>Training and alignment runs</h2>"]
    rows = []
    for run in runs:
        run = Path(run)
        cs = curves(run)
        if not cs:
            continue
        img = _plot(run, cs)
        md += [f"### {_title(run)}", "", f"![{run.name}](data:image/png;base64,{img})", ""]
        body += [f"<h3>{html.escape(_title(run))}</h3>",
                 f'<img src="data:image/png;base64,{img}">']
        for (split, metric), (steps, values) in cs.items():
            rows.append([run.name, f"{split} {metric}", steps[0], f"{values[0]:.4g}",
                         steps[-1], f"{values[-1]:.4g}"])
    headers = ["run", "curve", "first step", "first", "last step", "last"]
    md += ["### First and last values", "", md_table(rows, headers), ""]
    body += ["<h3>First and last values</h3>", html_table(rows, headers)]
    return "\n".join(md), "\n".join(body)
