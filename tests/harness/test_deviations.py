"""Known deviations are data about peer libraries: they name real tests, never excuse our own
backends, and the report shows each reproduced one with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmspec.reports.render import render
from lmspec.spec import stems
from lmspec.spec._deviations import DEVIATIONS

ROOT = Path(__file__).resolve().parents[2]
OURS = {"reference", "torch_triton", "triton_interpret", "jax_xla", "bpe_fast"}


@pytest.mark.parametrize("dev", DEVIATIONS, ids=lambda d: f"{d.backend}-{d.component}-{d.test}")
def test_a_deviation_names_a_peer_and_an_existing_test(dev):
    assert dev.backend not in OURS, "a deviation never excuses our own backends: fix the bug"
    assert dev.component in stems()
    source = (ROOT / "conformance" / f"test_{dev.component}.py").read_text()
    assert f"def test_{dev.test}(" in source or dev.test in ("forward", "backward", "errors")
    assert len(dev.reason) > 40, "say why, with the evidence"


def test_a_reproduced_deviation_is_shown_with_its_reason_and_never_as_passed(tmp_path):
    dev = DEVIATIONS[0]
    base = {"component": dev.component, "backend": dev.backend, "dtype": dev.dtype or "float32",
            "test": dev.test, "time": "t", "machine": "m", "version": "v"}
    rows = [dict(base, metric="outcome", value="deviation"),
            dict(base, test="forward", metric="outcome", value="passed")]
    (tmp_path / "conformance.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = render(tmp_path)[0].read_text()
    assert "DEV" in md and dev.reason in md
