"""Training checkpoints: safetensors for every tensor, JSON for everything else, written
atomically.

A checkpoint is a folder ``OUT/step-NNNNNNNN/`` holding

- ``model.safetensors``: the parameters by their spec/model.py names (float32 master weights,
  buffers such as MoE router biases included), readable by spec/_checkpoint.py's
  ``read_safetensors`` (and by the ``safetensors`` package);
- ``optimizer.safetensors``: the optimizer state, ``{group}.{name}`` (``m.layers.0.attn.wq``,
  ``v.embed``, ...), exactly as ``init_opt_state`` nests it;
- ``state.json``: the step, the model and train configs, the data position (``Batches
  .state_dict()``), the RNG state, free-form ``extra`` (the run config), the lmspec version,
  and the SHA-256 of both tensor files (checked on load).

Writing is atomic: everything goes to a temporary folder beside the target in the same
parent (``.tmp-step-NNNNNNNN-<pid>``), each file is fsync'ed, then the folder, then it is
renamed into place and the parent fsync'ed; ``OUT/latest`` (the newest step folder's name)
is replaced by a temp file + ``os.replace`` only after that. A reader therefore sees a
complete checkpoint or none: a writer killed at any point leaves at most a ``.tmp-*`` folder,
which ``latest`` and ``load`` never read and the next ``save`` removes.

To serve a checkpoint: ``lmspec serve --model OUT``; to export it to HF transformers:
``spec/_checkpoint.save_hf_dir(dir, config, load(...).params, model_type)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmspec.spec._checkpoint import read_safetensors, write_safetensors

FORMAT = "lmspec-train-checkpoint/1"
_STEP = re.compile(r"^step-(\d{8})$")
_PAUSE_ENV = "LMSPEC_CKPT_TEST_PAUSE"  # tests: a file path; the writer waits while it exists


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    params: dict[str, np.ndarray]
    opt_state: dict[str, dict[str, np.ndarray]]
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    data_state: dict[str, Any] | None
    rng_state: dict[str, Any] | None
    extra: dict[str, Any]


def step_dir(out: str | Path, step: int) -> Path:
    return Path(out) / f"step-{step:08d}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _flat_opt(opt_state: dict) -> dict[str, np.ndarray]:
    out = {}
    for group, d in opt_state.items():
        if "." in group:
            raise ValueError(f"opt_state: group names may not contain '.', got {group!r}")
        for name, a in d.items():
            out[f"{group}.{name}"] = np.asarray(a)
    return out


def _nested_opt(flat: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, a in flat.items():
        group, _, name = key.partition(".")
        out.setdefault(group, {})[name] = a
    return out


def steps(out: str | Path) -> list[int]:
    """The complete checkpoints in ``out``, oldest first (temporary folders ignored)."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        m = _STEP.match(p.name)
        if m and (p / "state.json").exists():
            found.append(int(m.group(1)))
    return sorted(found)


def latest(out: str | Path) -> Path | None:
    """The newest complete checkpoint folder in ``out``, or None."""
    out = Path(out)
    pointer = out / "latest"
    if pointer.exists():
        p = out / pointer.read_text().strip()
        if (p / "state.json").exists():
            return p
    found = steps(out)
    return step_dir(out, found[-1]) if found else None


def save(out: str | Path, step: int, *, params: dict, opt_state: dict, model_config: dict,
         train_config: dict, data_state: dict | None = None, rng_state: dict | None = None,
         extra: dict | None = None, keep_last: int | None = None) -> Path:
    """Writes checkpoint ``step`` atomically; returns its folder. ``keep_last``: then only
    the newest K complete checkpoints are kept."""
    if not (isinstance(step, int) and step >= 0):
        raise ValueError(f"step: expected an integer >= 0, got {step!r}")
    if keep_last is not None and not (isinstance(keep_last, int) and keep_last >= 1):
        raise ValueError(f"keep_last: expected an integer >= 1 or None, got {keep_last!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".tmp-step-*"):  # a killed writer's leftovers
        shutil.rmtree(stale, ignore_errors=True)
    final = step_dir(out, step)
    tmp = out / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        write_safetensors(tmp / "model.safetensors",
                          {n: np.asarray(a) for n, a in params.items()})
        _pause_for_tests()
        write_safetensors(tmp / "optimizer.safetensors", _flat_opt(opt_state))
        version = _version()
        state = {"format": FORMAT, "step": step, "model_config": model_config,
                 "train_config": train_config, "data_state": data_state,
                 "rng_state": rng_state, "extra": extra or {}, "lmspec_version": version,
                 "sha256": {f: _sha256(tmp / f)
                            for f in ("model.safetensors", "optimizer.safetensors")}}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        if final.exists():  # the same step written again (a resumed run): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = out / f".latest-{os.getpid()}"
    pointer.write_text(final.name)
    _fsync(pointer)
    os.replace(pointer, out / "latest")
    _fsync(out)
    if keep_last is not None:
        for old in steps(out)[:-keep_last]:
            shutil.rmtree(step_dir(out, old), ignore_errors=True)
    return final


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lmspec")
    except PackageNotFoundError:
        return "unknown"


def _pause_for_tests() -> None:
    """Half-way through a save, wait while the file named by $LMSPEC_CKPT_TEST_PAUSE
    exists (tests kill the writer there); no effect when it is unset."""
    flag = os.environ.get(_PAUSE_ENV)
    if flag:
        import time

        Path(flag + ".reached").write_text("1")
        while Path(flag).exists():
            time.sleep(0.01)


def load(path: str | Path) -> Checkpoint:
    """A checkpoint folder, or a run folder (its ``latest``). Checks the format, both
    files' SHA-256 and that the optimizer state names are parameter names."""
    path = Path(path)
    if not (path / "state.json").exists():
        found = latest(path) if path.is_dir() else None
        if found is None:
            raise FileNotFoundError(f"checkpoint: no state.json in {path}, and no complete "
                                    "checkpoint folder under it")
        path = found
    try:
        state = json.loads((path / "state.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"checkpoint: {path / 'state.json'} is not valid JSON ({e})") from None
    if state.get("format") != FORMAT:
        raise ValueError(f"checkpoint: {path} has format {state.get('format')!r}, expected "
                         f"{FORMAT!r}")
    tensors = {}
    for f in ("model.safetensors", "optimizer.safetensors"):
        p = path / f
        if not p.exists():
            raise FileNotFoundError(f"checkpoint: {p} is missing")
        if _sha256(p) != state["sha256"][f]:
            raise ValueError(f"checkpoint: {p} does not match its SHA-256 in state.json "
                             "(corrupt or replaced)")
        try:
            tensors[f] = read_safetensors(p)
        except Exception as e:
            raise ValueError(f"checkpoint: {p} is not a readable safetensors file ({e})") \
                from None
    params, opt = tensors["model.safetensors"], _nested_opt(tensors["optimizer.safetensors"])
    for group, d in opt.items():
        unknown = sorted(set(d) - set(params))
        if unknown:
            raise ValueError(f"checkpoint: optimizer group {group!r} holds names that are no "
                             f"parameter: {unknown[:3]}")
    return Checkpoint(path, int(state["step"]), params, opt, state["model_config"],
                      state["train_config"], state.get("data_state"), state.get("rng_state"),
                      state.get("extra") or {})
