"""lmspec.spec: the contract of every component, one module per stem.

Each module defines the documented signature (``<stem>(...)``), ``check_args`` (the argument
checks every implementation must make) and ``COMPONENT`` (inputs, outputs, strategies, error
inputs). Modules whose names start with ``_`` are infrastructure, not components.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType

from lmspec.spec._contract import Case, Component, ErrorCase

__all__ = ["Case", "Component", "ErrorCase", "component", "module", "stems"]


@cache
def stems() -> tuple[str, ...]:
    """Every component stem, sorted."""
    names = (m.name for m in pkgutil.iter_modules(__path__))
    return tuple(sorted(n for n in names if not n.startswith("_")))


def module(stem: str) -> ModuleType:
    if stem not in stems():
        raise KeyError(f"stem: unknown component {stem!r}; known: {', '.join(stems())}")
    return importlib.import_module(f"lmspec.spec.{stem}")


def component(stem: str) -> Component:
    return module(stem).COMPONENT
