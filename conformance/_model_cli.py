"""``lmspec model inspect DIR|PRESET``: a model's config as lmspec reads it, and its sizes
(parameters, active parameters per token, KV-cache bytes per token). ``lmspec model logits
DIR|PRESET --backend B --text ...``: a backend's next-token distribution, and its worst
disagreement with the float64 reference on the same parameters."""

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


def _token_ids(ns: argparse.Namespace, target: str) -> tuple[list[int], object | None]:
    """(ids, tokenizer or None): --tokens, or --text through --vocab or DIR/tokenizer.json."""
    from lmspec import reference as R
    from lmspec.conformance._tokenizer_cli import load_vocab

    vocab = ns.vocab
    if vocab is None and Path(target, "tokenizer.json").is_file():
        vocab = str(Path(target, "tokenizer.json"))
    tok = None
    if vocab is not None:
        ranks, pattern, specials = load_vocab(vocab)
        tok = R.tokenizer(ranks, pattern=pattern, special_tokens=specials)
    if ns.tokens is not None:
        try:
            ids = [int(x) for x in ns.tokens.replace(",", " ").split()]
        except ValueError:
            raise CliError(f"--tokens: expected integers, got {ns.tokens!r}") from None
    elif ns.text is not None:
        if tok is None:
            raise CliError("--text needs a tokenizer: --vocab NAME|FILE, or a tokenizer.json "
                           "in the checkpoint directory (or give --tokens)")
        ids = list(tok.encode(ns.text, allowed_special="all"))
    else:
        raise CliError("give --text TEXT or --tokens IDS")
    if not ids:
        raise CliError("the input is empty: no tokens to run")
    return ids, tok


def _params(target: str, seed: int, dtype):
    """(config, float parameters) of a checkpoint directory (read as stored, then ``dtype``)
    or a preset (random, ``init_params(seed)``)."""
    import numpy as np

    from lmspec.spec.model import init_params

    config, _ = _resolve(target)
    if Path(target).is_dir():
        from lmspec.spec._checkpoint import load_hf_dir

        _, params = load_hf_dir(target)
    else:
        params = init_params(config, seed)
    return config, {n: np.asarray(a, dtype) for n, a in params.items()}


def logits(target: str, ids: list[int], backend_name: str, dtype: str = "float32",
           top: int = 5, seed: int = 0, compare: bool = True, tokenizer=None) -> dict:
    import numpy as np

    from lmspec import backends
    from lmspec import reference as R

    backend = backends.load(backend_name)
    if not backend.has("model"):
        raise CliError(f"--backend {backend_name}: it does not implement model")
    if dtype not in backend.dtypes and not (backend.name == "reference"):
        raise CliError(f"--dtype {dtype}: {backend.name} runs {', '.join(backend.dtypes)}")
    config, params = _params(target, seed, np.float64)
    toks = np.asarray([ids], np.int64)
    if int(toks.max()) >= config.vocab_size:
        raise CliError(f"token id {int(toks.max())} is outside the model's vocabulary "
                       f"(vocab_size {config.vocab_size})")
    native = {n: backend.asarray(a, dtype) for n, a in params.items()}
    got = np.asarray(backend.to_numpy(backend.fn("model")(native, backend.asarray(toks, None),
                                                          config=config)[0]), np.float64)[0]
    last = got[-1]
    p = np.exp(last - last.max())
    p /= p.sum()
    order = np.argsort(-last, kind="stable")[:top]
    out = {"source": _resolve(target)[1], "backend": backend.name, "dtype": dtype,
           "n_tokens": len(ids), "top": [
               {"id": int(i), "text": None if tokenizer is None else
                tokenizer.decode([int(i)]), "logit": float(last[i]), "p": float(p[i])}
               for i in order]}
    if compare:
        # the reference on the parameters the backend saw (rounded to its dtype)
        seen = {n: backend.to_numpy(a).astype(np.float64) for n, a in native.items()}
        ref = np.asarray(R.model(seen, toks, config=config)[0], np.float64)[0]
        diff = np.abs(got - ref)
        pos, tid = (int(x) for x in np.unravel_index(int(np.argmax(diff)), diff.shape))
        out["reference"] = {
            "max_abs_error": float(diff.max()),
            "relative": float(diff.max() / max(float(np.abs(ref).max()), 1e-300)),
            "at": {"position": pos, "token": tid, "got": float(got[pos, tid]),
                   "reference": float(ref[pos, tid])},
            "top1_agree": int(np.sum(got.argmax(-1) == ref.argmax(-1))),
            "positions": len(ids)}
    return out


def cmd_logits(ns: argparse.Namespace) -> int:
    if ns.top < 1:
        raise CliError(f"--top: expected >= 1, got {ns.top}")
    ids, tok = _token_ids(ns, ns.target)
    info = logits(ns.target, ids, ns.backend, ns.dtype, ns.top, ns.seed, not ns.no_reference,
                  tok)
    if ns.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    print(f"model: {info['source']}; backend {info['backend']} {info['dtype']}; "
          f"{info['n_tokens']} tokens")
    print(f"top {len(info['top'])} next tokens:")
    for k, t in enumerate(info["top"], 1):
        text = "" if t["text"] is None else f" {t['text']!r}"
        print(f"  {k}. id {t['id']}{text}  logit {t['logit']:.4f}  p {t['p']:.4f}")
    if "reference" in info:
        r = info["reference"]
        print(f"worst disagreement with the float64 reference: {r['max_abs_error']:.3g} "
              f"({r['relative']:.3g} of max|logit|) at position {r['at']['position']}, token "
              f"{r['at']['token']}; top-1 agrees at {r['top1_agree']}/{r['positions']} "
              "positions")
    return 0


def add_parser(sub) -> None:
    sp = sub.add_parser("model", help="model checkpoints and presets: inspect, logits")
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
    lp = msub.add_parser("logits", help="a backend's top next tokens, and its worst "
                                        "disagreement with the float64 reference")
    lp.add_argument("target", help="a Hugging Face checkpoint directory or an lmspec preset "
                                   "(random weights from --seed)")
    lp.add_argument("--backend", default="torch_triton", help="default: torch_triton")
    lp.add_argument("--dtype", default="float32", help="default: float32")
    src = lp.add_mutually_exclusive_group()
    src.add_argument("--text", help="text, encoded with --vocab or DIR/tokenizer.json")
    src.add_argument("--tokens", help="token ids, space- or comma-separated")
    lp.add_argument("--vocab", help="a tokenizer preset (cl100k_base, ...), .tiktoken file or "
                                    "tokenizer.json; default: DIR/tokenizer.json")
    lp.add_argument("--top", type=int, default=5, help="how many next tokens (default 5)")
    lp.add_argument("--seed", type=int, default=0, help="a preset's weights (default 0)")
    lp.add_argument("--no-reference", action="store_true",
                    help="skip the float64 reference (it holds the model in float64 memory)")
    lp.add_argument("--json", action="store_true", help="print JSON")
    lp.set_defaults(fn=cmd_logits)
