"""Report section: the planted-bug run (tests/harness/test_mutants.py writes plants.jsonl into
the results folder): for every plant, the tests that fail on it, and which plants the generic
forward and backward tests miss, so that a plant caught by one dedicated property only is
visible (issue 18)."""

from __future__ import annotations

import functools
import html
from pathlib import Path

from lmspec.reports.render import html_table, md_table, read_rows

# the tests every component has (conformance/_check.py standard_tests), as results name them
GENERIC = ("forward", "backward", "loss_and_gradients")  # the last: the model's gradient test
HEADERS = ["plant", "component", "tests that fail on it"]


def plant_rows(caught: dict[str, tuple[str, list[str]]]) -> list[dict]:
    """plant -> (component, the 'component:test' names that failed) as result rows."""
    return [{"plant": name, "component": stem,
             "failed": sorted({t.split(":", 1)[1] for t in tests})}
            for name, (stem, tests) in sorted(caught.items())]


@functools.cache
def has_generic(stem: str) -> bool:
    """Whether the component's conformance module has the generic tests (the tokenizer,
    bpe_train and train_step have their own anatomy instead)."""
    from lmspec import conformance

    path = Path(conformance.__file__).parent / f"test_{stem}.py"
    text = path.read_text() if path.exists() else ""
    return "standard_tests(" in text or "def test_forward(" in text


def generic_miss(row: dict) -> bool:
    """A plant of a component with generic tests that none of them catches."""
    return has_generic(row["component"]) and not any(t in GENERIC for t in row["failed"])


def section(results: Path, bench_rows: list[dict]) -> tuple[str, str] | None:
    path = Path(results) / "plants.jsonl"
    if not path.exists():
        return None
    rows = read_rows(path)
    if not rows:
        return None
    missed = [r for r in rows if generic_miss(r)]
    single = [r for r in rows if len(r["failed"]) == 1]
    uncaught = [r["plant"] for r in rows if not r["failed"]]
    own = sorted({r["component"] for r in rows if not has_generic(r["component"])})
    n_own = sum(r["component"] in own for r in rows)
    summary = (f"{len(rows)} planted bugs over {len({r['component'] for r in rows})} "
               f"components; in components without generic tests ({', '.join(own)}): "
               f"{n_own}; caught by a generic forward or backward test: "
               f"{len(rows) - n_own - len(missed)}; by dedicated tests only: {len(missed)}; "
               f"by exactly one test: {len(single)}; by none: {len(uncaught)}"
               + (f" ({', '.join(uncaught)})" if uncaught else "") + ".")
    table = [[r["plant"], r["component"], ", ".join(r["failed"]) or "NONE"] for r in missed]
    title = "Planted bugs the generic tests miss"
    md = "\n\n".join([f"## {title}", summary, md_table(table, HEADERS)])
    page = (f"<h2>{title}</h2><p>{html.escape(summary)}</p>{html_table(table, HEADERS)}")
    return md, page
