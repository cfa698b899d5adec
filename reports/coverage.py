"""Report section: parameter coverage (issue 18). The conformance run writes coverage.jsonl
(conformance/conftest.py): for every test and target, the examples hypothesis drew with each
feature value (spec/_coverage.py) and how many of those were judged. Here, per component, the
values its generic tests drew: the fewest over the run's targets (the backend and dtype that
saw a value least) and the total, with the values the spec states marked, and any stated
value drawn in fewer than MIN_SHARE of a target's examples flagged."""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path

from lmspec.reports.render import html_table, md_table, read_rows
from lmspec.spec._coverage import MIN_SHARE

HEADERS = ["feature", "value", "stated", "test", "fewest drawn (target)", "drawn", "judged",
           "examples"]


def coverage_table(rows: list[dict]) -> dict[str, list[list]]:
    """component -> table rows (HEADERS), stated values first, then the rest by feature."""
    from lmspec import spec

    examples: dict[tuple, int] = {}  # (stem, test, backend, dtype) -> examples drawn
    per: dict[tuple, dict[str, list[int]]] = defaultdict(dict)
    for r in rows:
        key = (r["component"], r["test"], r["backend"], r["dtype"])
        if r["feature"] == "examples":
            examples[key] = r["drawn"]
        else:
            per[(r["component"], r["test"], r["feature"], r["value"])][
                f"{r['backend']}/{r['dtype']}"] = [r["drawn"], r["judged"]]
    out: dict[str, list[list]] = defaultdict(list)
    for stem, test in sorted({(k[0], k[1]) for k in examples}):
        targets = {f"{k[2]}/{k[3]}": n for k, n in examples.items() if k[:2] == (stem, test)}
        try:
            stated = spec.component(stem).coverage
        except KeyError:
            stated = {}
        values = {(k[2], k[3]) for k in per if k[:2] == (stem, test)}
        values |= {(f, v) for f, vs in stated.items() for v in vs}
        order = sorted(values, key=lambda fv: (fv[0] not in stated, fv))
        for feature, value in order:
            got = per.get((stem, test, feature, value), {})
            counts = {t: got.get(t, [0, 0]) for t in targets}
            least = min(counts, key=lambda t: counts[t][0])
            is_stated = value in stated.get(feature, ())
            short = is_stated and any(counts[t][0] < MIN_SHARE * n for t, n in targets.items())
            mark = ("yes, SHORT" if short else "yes") if is_stated else ""
            out[stem].append([feature, value, mark, test, f"{counts[least][0]} ({least})",
                              sum(c[0] for c in counts.values()),
                              sum(c[1] for c in counts.values()), sum(targets.values())])
    return dict(out)


def section(results: Path, bench_rows: list[dict]) -> tuple[str, str] | None:
    path = Path(results) / "coverage.jsonl"
    if not path.exists():
        return None
    rows = read_rows(path)
    if not rows:
        return None
    tables = coverage_table(rows)
    profiles = ", ".join(sorted({r["profile"] for r in rows}))
    short = sorted({stem for stem, t in tables.items() for r in t if r[2] == "yes, SHORT"})
    title = "Parameter coverage"
    summary = (f"What the generic tests drew, per component ({profiles} profile): each feature "
               f"value (a parameter's value, an optional input given or absent, a class such "
               f"as sdpa's head grouping), in the examples of the target that drew it least "
               f"and over all targets. 'stated': the spec requires the value "
               f"(Component.coverage); SHORT: some target drew it in fewer than "
               f"{MIN_SHARE:.0%} of its examples. Components with a stated value drawn short: "
               f"{', '.join(short) or 'none'}.")
    md = [f"## {title}", summary]
    page = [f"<h2>{title}</h2><p>{html.escape(summary)}</p>"]
    for stem, table in sorted(tables.items()):
        md += [f"### {stem}", md_table(table, HEADERS)]
        page.append(f"<h3>{html.escape(stem)}</h3>{html_table(table, HEADERS)}")
    return "\n\n".join(md), "".join(page)
