"""Parameter coverage: which values of a component's inputs the generic tests draw (issue 18).

A *feature* of a case is a named class of input that changes the math: every scalar parameter
(a convention, a scaling type, a fill, a flag) by its value, every optional array by whether it
is given, whether a required array is empty, and the classes a component derives from shapes (sdpa's
head grouping: MHA, MQA or GQA). The generic forward and backward tests report each example's
features to hypothesis as events (``hypothesis.event("cover <feature>", value)``), so that the
counts come from hypothesis' own statistics; the conformance run writes them to
``coverage.jsonl`` and the report shows them per component.

A component states the values its strategy must reach (``Component.coverage``); a harness test
(tests/harness/test_coverage.py) draws the strategy as the ci profile does and fails when a
stated value is drawn in fewer than ``MIN_SHARE`` of the examples.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from functools import cache

import numpy as np

from lmspec.spec._contract import Case, Component

EVENT_PREFIX = "cover "
# every value a component states must be drawn in at least this share of the examples of each
# generic test: one of the ci profile's 20 in each run on average (a run per backend and
# dtype). Measured over many runs: hypothesis' examples within a run are correlated, so a
# value's share in one run of 20 varies far more than a binomial draw's would.
MIN_SHARE = 0.05
_SCALARS = (bool, int, float, str, type(None), np.generic)
# parameters that are not a class of input: a seed for the values, a free text
_NOT_FEATURES = ("seed", "text", "pattern")


def _label(value) -> str | None:
    """A parameter value as a feature value; None for one that is not a class (a long string,
    a structure without a ``kind``)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return "None"
    if isinstance(value, str) and len(value) > 24:
        return None
    if isinstance(value, _SCALARS):
        return str(value)
    kind = getattr(value, "kind", None)  # RopeScaling and the like: its kind
    return str(kind) if isinstance(kind, str) else None


@cache
def optional_inputs(stem: str) -> tuple[str, ...]:
    """The array inputs whose default is None in the spec's signature."""
    from lmspec import spec

    fn = getattr(spec.module(stem), stem, None)
    if fn is None:
        return ()
    sig = inspect.signature(fn).parameters
    return tuple(n for n in spec.component(stem).inputs
                 if n in sig and sig[n].default is None)


def features(comp: Component, case: Case) -> dict[str, str]:
    """The case's features, ``feature -> value`` (both strings). An empty case (a required
    array of size 0) has the one feature ``empty: yes``: it exercises no parameter's math."""
    arrays = case.arrays
    optional = optional_inputs(comp.stem)
    sized = [a for n, a in arrays.items() if a is not None and np.ndim(a) > 0
             and n not in optional]  # an empty cache is a start, not an empty case
    if any(np.size(a) == 0 for a in sized):
        return {"empty": "yes"}  # an empty case exercises none of the other classes
    out: dict[str, str] = {"empty": "no"}
    for name, value in case.params.items():
        label = _label(value) if name not in _NOT_FEATURES else None
        if label is not None:
            out[name] = label
    for name in optional:
        out[name] = "absent" if arrays.get(name) is None else "given"
    if comp.features is not None:
        out.update({k: _label(v) for k, v in comp.features(case).items()})
    return out


def emit(comp: Component, case: Case) -> None:
    """Report the case's features to hypothesis; nothing outside a hypothesis test (a
    property that builds its own case calls the same checks)."""
    from hypothesis import event
    from hypothesis.control import currently_in_test_context

    if not currently_in_test_context():
        return
    for name, value in features(comp, case).items():
        event(EVENT_PREFIX + name, value)


def parse(events) -> dict[str, str]:
    """The features among one example's hypothesis event strings (``"cover k: v"``)."""
    out = {}
    for e in events:
        if e.startswith(EVENT_PREFIX) and ": " in e:
            name, value = e[len(EVENT_PREFIX):].split(": ", 1)
            out[name] = value
    return out


def shortfalls(comp: Component, counts: Mapping[tuple[str, str], int], n: int) -> list[str]:
    """The stated values (``comp.coverage``) drawn in fewer than MIN_SHARE of ``n`` examples,
    as readable lines; ``counts`` maps (feature, value) to the examples that drew it."""
    need = max(1, int(np.ceil(MIN_SHARE * n)))
    return [f"{comp.stem}: {name}={value} drawn in {counts.get((name, value), 0)} of {n} "
            f"examples (at least {need} wanted)"
            for name, values in comp.coverage.items() for value in values
            if counts.get((name, value), 0) < need]


JUDGED = ("valid", "interesting")  # hypothesis' statuses of an example that ran to a verdict


def tally(stats: Mapping) -> dict[tuple[str, str], list[int]]:
    """(feature, value) -> [examples drawn, examples judged] over the generate phase of one
    test's hypothesis statistics (the dict hypothesis.statistics.collector receives); the key
    ("examples", "all") counts every example. Judged: not rejected by an ``assume``."""
    out: dict[tuple[str, str], list[int]] = {}
    for case in stats.get("generate-phase", {}).get("test-cases", []):
        if case["status"] == "overrun":  # ran out of data before a case was built: none drawn
            continue
        judged = case["status"] in JUDGED
        for key in [("examples", "all"), *parse(case["events"]).items()]:
            counts = out.setdefault(key, [0, 0])
            counts[0] += 1
            counts[1] += judged
    return out
