"""Training checkpoints: safetensors for the arrays, JSON for the rest, written atomically.

Layout of ``out_dir`` (one writer per folder)::

    out_dir/step-00000123/model.safetensors      the parameters, lmspec names (spec/model.py)
    out_dir/step-00000123/optimizer.safetensors  the optimizer state, flattened: "m/embed", ...
    out_dir/step-00000123/state.json             everything else, and the files' manifest
    out_dir/latest                               "step-00000123\\n": the committed checkpoint

``model.safetensors`` alone is a model: its tensors are ``param_shapes(config)``'s names in
their stored dtype, read by ``lmspec.spec._checkpoint.read_safetensors`` (or the
``safetensors`` package), and its ``__metadata__`` holds ``lmspec_model_config`` (the JSON of
``ModelConfig.to_dict``). For Hugging Face transformers, ``export_hf`` writes an HF directory
through ``spec/_checkpoint.py``'s ``save_hf_dir`` (``config.json``, HF names, weights
transposed to ``nn.Linear``'s (out, in)), which ``AutoModelForCausalLM.from_pretrained`` and
``load_hf_dir`` read.

``state.json``: ``format``, ``format_version``, ``lmspec_version``, ``step``, ``backend``,
``model_config`` (``ModelConfig.to_dict()``), ``train_config`` (``TrainConfig.to_dict()``,
whose ``schedule`` is the schedule), ``data_state`` (``Batches.state_dict()``: the data
position), ``rng_state``, ``extra`` (JSON values: tuples come back as lists), ``params`` and
``opt_state`` (the manifest: ``[dtype, shape]`` of each array in the order given, the
optimizer state's nesting as nested objects) and ``files`` (bytes and SHA-256 of each
safetensors file). Arrays come back bit-exact in their dtype (float32 master state, bfloat16
through ml_dtypes, integers; NumPy scalars as 0-d arrays).

Atomicity (a reader never sees a partial checkpoint): ``save`` writes every file into a
temporary folder ``out_dir/.tmp-step-00000123-XXXX`` (same parent: the rename cannot cross
file systems), fsyncs each file and the folder, renames it to ``step-00000123`` and fsyncs
``out_dir``; only then it writes ``latest`` (a temporary file, fsync, ``os.replace``, fsync of
``out_dir``). ``latest`` names the committed checkpoint; without it (a writer killed between
its first rename and its first pointer) the highest ``step-*`` folder does, since a ``step-*``
folder only ever appears complete. ``.tmp-*`` entries, what a killed writer leaves, are never
read, and the next ``save`` deletes them (so two writers must not share ``out_dir``); pruned
and replaced folders are renamed to ``.tmp-*`` before they are deleted. Peers: orbax's
``AtomicRenameTemporaryPath`` (``*.orbax-checkpoint-tmp`` folders renamed when complete;
``CommitFileTemporaryPath`` where renames are not atomic) and DeepSpeed's ``latest`` file
(the newest checkpoint's tag as plain text).

Loading validates: a missing or undecodable file, a size or SHA-256 that differs from the
manifest, a tensor whose name, shape or dtype differs from the manifest or from what the
caller expects (``expect_params``, ``expect_opt_state``) is an error naming the file and the
tensor; never a partial load.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from lmspec.spec import _checkpoint as st
from lmspec.spec.model import ModelConfig, param_shapes
from lmspec.spec.train_step import TrainConfig

FORMAT, FORMAT_VERSION = "lmspec-checkpoint", 1
MODEL, OPTIMIZER, STATE, POINTER = ("model.safetensors", "optimizer.safetensors", "state.json",
                                    "latest")
TMP = ".tmp-"
_STEP = re.compile(r"^step-(\d{8,})$")

# Tests only: called as HOOK(stage, folder) at each stage of a save: "model.safetensors",
# "optimizer.safetensors", "state.json" (that file written and fsynced, in the temporary
# folder), "renamed" (the folder in place, ``latest`` not yet), "latest" (committed).
HOOK: Callable[[str, Path], None] | None = None


@dataclass(frozen=True)
class Checkpoint:
    """One loaded checkpoint (``load``). ``model_config`` and ``train_config`` are the JSON
    dicts (``ModelConfig.from_dict`` / ``TrainConfig.from_dict`` rebuild them)."""

    path: Path
    step: int
    params: dict[str, np.ndarray]
    opt_state: dict[str, Any]
    model_config: dict
    train_config: dict | None
    data_state: Any
    rng_state: Any
    extra: Any
    backend: str | None
    lmspec_version: str


def step_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / f"step-{step:08d}"


def _step_of(p: Path) -> int:
    return int(_STEP.match(p.name).group(1))


# ----------------------------------------------------------------------------- validation


def _json(value, what: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what}: expected JSON values (dict, list, str, int, finite float, "
                        f"bool, None): {e}") from None


def _leaf(a, what: str) -> np.ndarray:
    if not isinstance(a, (np.ndarray, np.generic)):
        raise TypeError(f"{what}: expected a NumPy array, got {type(a).__name__} (convert "
                        "backend arrays with np.asarray first)")
    a = np.asarray(a)
    if a.dtype.name not in st._DTYPES.values():
        raise TypeError(f"{what}: dtype {a.dtype} has no safetensors form (expected one of "
                        f"{', '.join(sorted(st._DTYPES.values()))})")
    return a


def _flatten(tree, what: str, prefix: str = "") -> tuple[dict[str, np.ndarray], dict]:
    """(flat "a/b" -> array, manifest tree of [dtype, shape] leaves) of a nested mapping."""
    if not isinstance(tree, Mapping):
        raise TypeError(f"{what}: expected a mapping of names to arrays (or mappings)")
    flat, manifest = {}, {}
    for k, v in tree.items():
        if not isinstance(k, str) or not k or "/" in k:
            raise ValueError(f"{what}: key {k!r}: expected a non-empty str without '/'")
        sub = f"{what}[{k!r}]"
        if isinstance(v, Mapping):
            f, m = _flatten(v, sub, prefix + k + "/")
            flat.update(f)
            manifest[k] = m
        else:
            a = _leaf(v, sub)
            flat[prefix + k] = a
            manifest[k] = [a.dtype.name, list(a.shape)]
    return flat, manifest


def _check_params(params, config: ModelConfig) -> None:
    if not isinstance(params, Mapping) or any(isinstance(v, Mapping) for v in params.values()):
        raise TypeError("params: expected a flat mapping of names to arrays")
    shapes = param_shapes(config)
    missing = [n for n in shapes if n not in params]
    extra = sorted(set(params) - set(shapes))
    if missing or extra:
        raise ValueError(f"params: expected the names of param_shapes(model_config); missing "
                         f"{missing[:5]}, unexpected {extra[:5]}")
    for n, s in shapes.items():
        if tuple(np.shape(params[n])) != s:
            raise ValueError(f"params[{n!r}]: expected shape {s}, got {np.shape(params[n])}")


def _config_dict(model_config) -> dict:
    if isinstance(model_config, Mapping):
        try:
            model_config = ModelConfig.from_dict(dict(model_config))
        except (TypeError, ValueError) as e:
            raise ValueError(f"model_config: not a ModelConfig dict: {e}") from None
    if not isinstance(model_config, ModelConfig):
        raise TypeError("model_config: expected a ModelConfig or its to_dict()")
    return model_config


# ----------------------------------------------------------------------------- writing


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's data and metadata to the disk (an fd opened read-only
    suffices on Linux: fsync acts on the inode, whichever fd wrote it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_info(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _stage(name: str, folder: Path) -> None:
    if HOOK is not None:
        HOOK(name, folder)


def _discard(path: Path) -> None:
    """Delete a folder without ever showing a half-deleted ``step-*``: rename it first."""
    trash = Path(tempfile.mkdtemp(prefix=f"{TMP}trash-", dir=path.parent))
    os.rename(path, trash / path.name)
    shutil.rmtree(trash)


def _clean_leftovers(out_dir: Path) -> None:
    for p in out_dir.glob(f"{TMP}*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _write_pointer(out_dir: Path, name: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP}latest-", dir=out_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_dir / POINTER)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(out_dir)


def save(out_dir: str | Path, step: int, *, params: Mapping[str, np.ndarray],
         opt_state: Mapping[str, Any], model_config: ModelConfig | dict,
         train_config: TrainConfig | dict | None, data_state: Any = None,
         rng_state: Any = None, extra: Any = None, backend: str | None = None,
         keep_last: int | None = None) -> Path:
    """Write ``out_dir/step-{step:08d}`` atomically, point ``latest`` at it, prune; returns
    the folder.

    ``params``: every name of ``param_shapes(model_config)``, NumPy arrays of those shapes,
    any dtype safetensors has; ``opt_state``: a nested mapping of NumPy arrays (what
    ``init_opt_state`` and ``train_step`` return, ``{"m": {...}, "v": {...}}``, and any other
    arrays such as step counters); ``data_state``, ``rng_state``, ``extra``: JSON values
    (``Batches.state_dict()``; ``np.random.Generator.bit_generator.state`` is JSON).
    ``keep_last``: keep the K highest ``step-*`` folders, the one just written among them;
    None keeps all. Saving a step that exists replaces that folder (an orphan of a killed
    writer), unless ``latest`` names it (FileExistsError: a reader may be using it). Bad
    input is an error naming the argument, raised before anything is written."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step: expected an integer >= 0, got {step!r}")
    if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int)
                                  or keep_last < 1):
        raise ValueError(f"keep_last: expected an integer >= 1 or None, got {keep_last!r}")
    config = _config_dict(model_config)
    cfg_dict = config.to_dict()
    tc = train_config.to_dict() if isinstance(train_config, TrainConfig) else train_config
    _check_params(params, config)
    flat_p, man_p = _flatten(params, "params")
    flat_o, man_o = _flatten(opt_state, "opt_state")
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend: expected a str or None, got {backend!r}")
    for what, v in (("model_config", cfg_dict), ("train_config", tc),
                    ("data_state", data_state), ("rng_state", rng_state), ("extra", extra)):
        _json(v, what)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = step_dir(out_dir, int(step))
    try:
        current = latest(out_dir)
    except (ValueError, FileNotFoundError):  # a broken pointer: this save replaces it
        current = None
    if current is not None and current.name == final.name:
        raise FileExistsError(f"{final}: is the latest checkpoint; not replacing it")
    _clean_leftovers(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP}{final.name}-", dir=out_dir))
    try:
        st.write_safetensors(tmp / MODEL, flat_p,
                             {"lmspec_model_config": json.dumps(cfg_dict, allow_nan=False)})
        _fsync(tmp / MODEL)
        _stage(MODEL, tmp)
        st.write_safetensors(tmp / OPTIMIZER, flat_o)
        _fsync(tmp / OPTIMIZER)
        _stage(OPTIMIZER, tmp)
        state = {"format": FORMAT, "format_version": FORMAT_VERSION,
                 "lmspec_version": _version(), "step": int(step), "backend": backend,
                 "model_config": cfg_dict, "train_config": tc, "data_state": data_state,
                 "rng_state": rng_state, "extra": extra, "params": man_p, "opt_state": man_o,
                 "files": {MODEL: _file_info(tmp / MODEL),
                           OPTIMIZER: _file_info(tmp / OPTIMIZER)}}
        with open(tmp / STATE, "w") as f:
            f.write(json.dumps(state, indent=1, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        _stage(STATE, tmp)
        _fsync(tmp)
        if final.exists():  # an orphan: renamed by a writer killed before its pointer
            _discard(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(out_dir)
    _stage("renamed", final)
    _write_pointer(out_dir, final.name)
    _stage(POINTER, final)
    if keep_last is not None:
        others = sorted((p for p in _step_dirs(out_dir) if p.name != final.name), key=_step_of)
        for p in others[:max(0, len(others) - (keep_last - 1))]:
            _discard(p)
    return final


def _version() -> str:
    try:
        return metadata.version("lmspec")
    except metadata.PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------- reading


def _step_dirs(out_dir: Path) -> list[Path]:
    return [p for p in out_dir.iterdir() if _STEP.match(p.name) and p.is_dir()]


def latest(out_dir: str | Path) -> Path | None:
    """The committed checkpoint of ``out_dir``: the folder ``latest`` names, or without that
    file the ``step-*`` folder of the highest step; None if there is none (a ``step-*``
    folder itself, or a missing folder, holds none)."""
    out_dir = Path(out_dir)
    pointer = out_dir / POINTER
    if pointer.is_file():
        name = pointer.read_text().strip()
        if not _STEP.match(name):
            raise ValueError(f"{pointer}: expected a step-NNNNNNNN folder name, got {name!r}")
        if not (out_dir / name).is_dir():
            raise FileNotFoundError(f"{pointer}: names {name}, which is not in {out_dir}")
        return out_dir / name
    if not out_dir.is_dir():
        return None
    folders = _step_dirs(out_dir)
    return max(folders, key=_step_of) if folders else None


def _read_tensors(path: Path, info: dict | None, verify: bool) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (the checkpoint is incomplete)")
    if info is not None and verify:
        got = _file_info(path)
        if got["bytes"] != info["bytes"]:
            raise ValueError(f"{path}: {got['bytes']} bytes, state.json says {info['bytes']} "
                             "(truncated or overwritten)")
        if got["sha256"] != info["sha256"]:
            raise ValueError(f"{path}: SHA-256 differs from state.json's (corrupt)")
    try:
        return st.read_safetensors(path)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def _unflatten(flat: dict, manifest: dict, path: Path, prefix: str = "") -> dict:
    out = {}
    for k, m in manifest.items():
        if isinstance(m, dict):
            out[k] = _unflatten(flat, m, path, prefix + k + "/")
            continue
        name, (dtype, shape) = prefix + k, m
        if name not in flat:
            raise ValueError(f"{path}: tensor {name!r} missing (state.json lists it)")
        a = flat.pop(name)
        if a.dtype.name != dtype or a.size != math.prod(shape):
            raise ValueError(f"{path}: tensor {name!r} is {a.dtype.name} {list(a.shape)}, "
                             f"state.json says {dtype} {shape}")
        # write_safetensors stores a 0-d array as shape (1,); the manifest has the shape
        out[k] = a.reshape(shape)
    return out


def _tensors(path: Path, manifest: dict, info, verify: bool) -> dict:
    flat = _read_tensors(path, info, verify)
    tree = _unflatten(flat, manifest, path)
    if flat:
        raise ValueError(f"{path}: tensors state.json does not list: {sorted(flat)[:5]}")
    return tree


def _expect(tree: dict, like: Mapping, path: Path, prefix: str = "") -> None:
    """Names, shapes and dtypes of ``tree`` equal those of ``like`` (arrays, or anything with
    ``shape`` and ``dtype``, nested as ``tree``)."""
    missing = [k for k in like if k not in tree]
    extra = [k for k in tree if k not in like]
    if missing or extra:
        raise ValueError(f"{path}: tensor names under {prefix or '/'!r} differ from the "
                         f"expected: missing {missing[:5]}, unexpected {extra[:5]}")
    for k, want in like.items():
        got, name = tree[k], prefix + k
        if isinstance(want, Mapping) != isinstance(got, dict):
            raise ValueError(f"{path}: {name!r}: expected "
                             f"{'a mapping' if isinstance(want, Mapping) else 'an array'}")
        if isinstance(want, Mapping):
            _expect(got, want, path, name + "/")
            continue
        shape, dtype = tuple(want.shape), np.dtype(want.dtype)
        if got.shape != shape or got.dtype != dtype:
            raise ValueError(f"{path}: tensor {name!r} is {got.dtype.name} {got.shape}, "
                             f"expected {dtype.name} {shape}")


def load(path: str | Path, *, expect_params: Mapping | None = None,
         expect_opt_state: Mapping | None = None, verify: bool = True) -> Checkpoint:
    """The checkpoint in ``path``: a ``step-*`` folder, or an ``out_dir`` (its ``latest``).

    ``expect_params`` / ``expect_opt_state``: the names, shapes and dtypes the caller needs
    (arrays, or objects with ``shape`` and ``dtype`` such as ``jax.ShapeDtypeStruct``, nested
    as the state); any difference is a ValueError naming the file and the tensor. ``verify``:
    check each file's size and SHA-256 against the manifest (reads each file twice)."""
    path = Path(path)
    if not ((path / STATE).exists() or _STEP.match(path.name)):
        found = latest(path)
        if found is None:
            raise FileNotFoundError(f"{path}: no checkpoint (no {STATE}, '{POINTER}' file or "
                                    "step-* folder)")
        path = found
    state_file = path / STATE
    if not state_file.is_file():
        raise FileNotFoundError(f"{state_file}: missing (the checkpoint is incomplete)")
    try:
        state = json.loads(state_file.read_text())
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{state_file}: not valid JSON ({e})") from None
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt != FORMAT:
        raise ValueError(f"{state_file}: not an lmspec checkpoint (format {fmt!r})")
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{state_file}: format_version {state.get('format_version')!r}, "
                         f"this lmspec reads {FORMAT_VERSION}")
    for k in ("step", "model_config", "params", "opt_state", "files"):
        if k not in state:
            raise ValueError(f"{state_file}: missing {k!r}")
    params = _tensors(path / MODEL, state["params"], state["files"].get(MODEL), verify)
    opt = _tensors(path / OPTIMIZER, state["opt_state"], state["files"].get(OPTIMIZER), verify)
    if expect_params is not None:
        _expect(params, expect_params, path / MODEL)
    if expect_opt_state is not None:
        _expect(opt, expect_opt_state, path / OPTIMIZER)
    return Checkpoint(path=path, step=state["step"], params=params, opt_state=opt,
                      model_config=state["model_config"], train_config=state.get("train_config"),
                      data_state=state.get("data_state"), rng_state=state.get("rng_state"),
                      extra=state.get("extra"), backend=state.get("backend"),
                      lmspec_version=state.get("lmspec_version", "unknown"))


def export_hf(path: str | Path, hf_dir: str | Path, model_type: str | None = None,
              **kw) -> Path:
    """The model of a checkpoint as a Hugging Face directory (``spec/_checkpoint.py``'s
    ``save_hf_dir``; ``model_type`` default: its config's ``infer_model_type``; ``kw``:
    ``max_shard_bytes``, ``overwrite``, ``max_position_embeddings``)."""
    ck = load(path)
    config = ModelConfig.from_dict(ck.model_config)
    return st.save_hf_dir(hf_dir, config, ck.params, model_type or st.infer_model_type(config),
                          **kw)
