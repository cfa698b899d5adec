"""Saved failing cases: arrays as .npz and everything else as .json, for ``lmspec replay``."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lmspec.conformance import _results
from lmspec.conformance._target import Target
from lmspec.spec import Case, component


def _encode(v: Any) -> Any:
    if hasattr(v, "__dataclass_fields__"):
        return {"__dataclass__": f"{type(v).__module__}.{type(v).__qualname__}",
                **{k: _encode(getattr(v, k)) for k in v.__dataclass_fields__}}
    return v


def _decode(v: Any) -> Any:
    if isinstance(v, dict) and "__dataclass__" in v:
        import importlib

        mod, _, cls = v["__dataclass__"].rpartition(".")
        if not mod.startswith("lmspec."):
            raise ValueError(f"case file: refusing to build {v['__dataclass__']!r}")
        fields = {k: _decode(x) for k, x in v.items() if k != "__dataclass__"}
        return getattr(importlib.import_module(mod), cls)(**fields)
    return v


def save_case(case: Case, stem: str, target: Target, test: str, extra: Mapping[str, Any]) -> Path:
    """Write the failing case as .npz (arrays, no pickle) + .json (everything else)."""
    out = _results.failures_dir()
    out.mkdir(parents=True, exist_ok=True)
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{stem}-{test}-{target.backend.name}-{target.dtype}")
    path = out / f"{base}.json"
    arrays = {n: a for n, a in case.arrays.items() if a is not None}
    np.savez(out / f"{base}.npz", **arrays)
    meta = {"stem": stem, "test": test, "backend": target.backend.name,
            "load": target.backend.load_name, "dtype": target.dtype,
            "none_arrays": [n for n, a in case.arrays.items() if a is None],
            "params": {k: _encode(v) for k, v in case.params.items()}, **extra}
    path.write_text(json.dumps(meta, indent=1))
    return path


def load_case(path: str | Path) -> tuple[dict, Case]:
    path = Path(path)
    meta = json.loads(path.read_text())
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
        arrays: dict[str, Any] = {n: z[n] for n in z.files}
    arrays.update({n: None for n in meta["none_arrays"]})
    order = component(meta["stem"]).inputs
    case = Case({n: arrays.get(n) for n in order},
                {k: _decode(v) for k, v in meta["params"].items()})
    return meta, case
