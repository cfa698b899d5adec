"""Meta-tests: one stem per component in every tree, and signatures that match the spec."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from lmspec import backends, reference
from lmspec.spec import module, stems

ROOT = Path(__file__).resolve().parents[2]


def _stems_in(folder: Path, prefix: str = "") -> set[str]:
    return {p.stem.removeprefix(prefix) for p in folder.glob(f"{prefix}*.py")
            if not p.stem.startswith("_") and p.stem != "__init__"}


def test_reference_and_conformance_have_exactly_the_spec_stems():
    spec = set(stems())
    assert _stems_in(ROOT / "reference") == spec
    assert _stems_in(ROOT / "conformance", "test_") == spec


@pytest.mark.parametrize("folder", sorted(p.name for p in (ROOT / "backends").iterdir()
                                          if p.is_dir() and not p.name.startswith("_")))
def test_backend_folders_hold_only_spec_stems(folder):
    extra = _stems_in(ROOT / "backends" / folder) - set(stems()) - {"interpret"}
    assert not extra, f"backends/{folder} has modules that are no spec stem: {sorted(extra)}"


def _params(fn) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("stem", stems())
def test_reference_signature_is_the_spec_signature(stem):
    assert _params(getattr(reference, stem)) == _params(getattr(module(stem), stem))


def _installed() -> list[backends.Backend]:
    out = []
    for name in backends.available():
        try:
            out.append(backends.load(name))
        except backends.BackendUnavailable:
            pass
    return out


@pytest.mark.parametrize("backend", _installed(), ids=lambda b: b.name)
def test_backend_signatures_are_the_spec_signatures(backend):
    for stem in stems():
        if backend.has(stem):
            assert _params(backend.fn(stem)) == _params(getattr(module(stem), stem)), stem


@pytest.mark.parametrize("stem", stems())
def test_every_component_declares_errors_and_documents_its_math(stem):
    comp = module(stem).COMPONENT
    assert comp.stem == stem
    assert comp.errors, f"{stem}: the spec lists no error inputs"
    assert len(inspect.getdoc(getattr(module(stem), stem)) or "") > 200
