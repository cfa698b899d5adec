"""``lmspec model inspect DIR|PRESET``: a model's config as lmspec reads it, and its sizes
(parameters, active parameters per token, KV-cache bytes per token)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lmspec.conformance.cli import CliError


def _resolve(target: str):
    """(config, source) of a Hugging Face checkpoint directory or an lmspec preset name."""
    from lmspec.spec._model_config import PRESETS, preset

    path = Path(target)
    if path.is_dir():
        from lmspec.spec._checkpoint import config_from_hf

        cfg_path = path / "config.json"
        if not cfg_path.exists():
            raise CliError(f"{path}: no config.json")
        hf = json.loads(cfg_path.read_text())
        return config_from_hf(hf), f"{path} (model_type {hf.get('model_type')})"
    if target in PRESETS:
        return preset(target), f"preset {target}"
    raise CliError(f"{target!r} is neither a checkpoint directory nor a preset; presets: "
                   f"{', '.join(PRESETS)}")


def inspect(target: str, bytes_per_element: float = 2, check_tensors: bool = False) -> dict:
    from lmspec.spec._model_config import (
        active_params_per_token,
        kv_cache_bytes_per_token,
        n_params,
    )

    config, source = _resolve(target)
    out = {"source": source, "config": config.to_dict(),
           "n_params": n_params(config),
           "n_params_with_buffers": n_params(config, trainable_only=False),
           "active_params_per_token": active_params_per_token(config),
           "kv_cache": kv_cache_bytes_per_token(config, bytes_per_element),
           "kv_bytes_per_element": bytes_per_element}
    if check_tensors:
        if not Path(target).is_dir():
            raise CliError("--check-tensors: needs a checkpoint directory")
        from lmspec.spec._checkpoint import load_hf_dir

        _, params = load_hf_dir(target)  # ValueError naming a missing / unexpected tensor
        out["tensors"] = {"count": len(params),
                          "dtypes": sorted({str(v.dtype) for v in params.values()})}
    return out


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def cmd_inspect(ns: argparse.Namespace) -> int:
    info = inspect(ns.target, ns.bytes_per_element, ns.check_tensors)
    if ns.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    print(f"model: {info['source']}")
    for k, v in info["config"].items():
        if v is not None and v != "" and k != "name":
            print(f"  {k}: {v}")
    kv = info["kv_cache"]
    print(f"parameters: {info['n_params']:,} ({_human(info['n_params'])})"
          + (f", {info['n_params_with_buffers']:,} with buffers"
             if info["n_params_with_buffers"] != info["n_params"] else ""))
    print(f"active parameters per token: {info['active_params_per_token']:,} "
          f"({_human(info['active_params_per_token'])})")
    print(f"KV cache per token ({kv['kind']}, {info['kv_bytes_per_element']} bytes/element): "
          f"{kv['bytes_per_token']:,.0f} bytes over {kv['softmax_layers']} softmax layers"
          + (f"; {kv['linear_layers']} linear layers hold "
             f"{kv['linear_state_bytes_per_sequence']:,} bytes of state per sequence"
             if kv["linear_layers"] else ""))
    if "tensors" in info:
        print(f"tensors: {info['tensors']['count']} lmspec parameters, "
              f"{', '.join(info['tensors']['dtypes'])}")
    return 0


def add_parser(sub) -> None:
    sp = sub.add_parser("model", help="model checkpoints and presets: inspect")
    msub = sp.add_subparsers(dest="model_command", required=True)
    ip = msub.add_parser("inspect", help="a checkpoint directory's or preset's config, "
                                         "parameter counts and KV-cache bytes per token")
    ip.add_argument("target", help="a Hugging Face checkpoint directory (config.json) or an "
                                   "lmspec preset name (e.g. tiny-llama)")
    ip.add_argument("--bytes-per-element", type=float, default=2,
                    help="KV-cache element size in bytes (default 2: bf16)")
    ip.add_argument("--check-tensors", action="store_true",
                    help="also read the tensors and check their names and shapes")
    ip.add_argument("--json", action="store_true", help="print JSON")
    ip.set_defaults(fn=cmd_inspect)
