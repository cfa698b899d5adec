"""``lmspec serve`` (the OpenAI-compatible server) and ``lmspec generate`` (a prompt streamed
to the terminal) over the engine (lmspec.serve).

The model: an lmspec run folder or checkpoint step folder (``lmspec train --out DIR``), or an
HF checkpoint directory. Without ``--model`` the default model is used: tiny-llama trained on
the default corpus by ``lmspec train`` on first use (a few minutes on 2 cores, with
progress), kept in ``$LMSPEC_HOME/default-model`` (default ``~/.cache/lmspec``) and reused
afterwards; nothing is downloaded."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_STEPS = 1200


def default_model_dir() -> Path:
    home = os.environ.get("LMSPEC_HOME") or Path.home() / ".cache" / "lmspec"
    return Path(home) / "default-model"


def ensure_default_model(backend: str = "torch_triton", log=None) -> Path:
    """The default model's run folder, trained first if it holds no finished run."""
    from lmspec.train import checkpoint as ckpt
    from lmspec.train.loop import RunConfig, train

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    out = default_model_dir()
    run = RunConfig(model="tiny-llama", backend=backend, steps=DEFAULT_STEPS, eval_every=100,
                    ckpt_every=100)
    latest = ckpt.latest(out) if out.exists() else None
    if latest is not None and ckpt.load(latest).step >= DEFAULT_STEPS:
        return out
    log(f"lmspec: no default model yet: training tiny-llama on the default corpus into {out} "
        f"({DEFAULT_STEPS} steps, a few minutes; done once)")
    train(run, out, resume=latest is not None)
    return out


def _engine(args):
    from lmspec.serve.engine import Engine

    path = Path(args.model) if args.model else ensure_default_model(args.backend)
    if not path.exists():
        from lmspec.conformance.cli import CliError

        raise CliError(f"--model: no such folder {path}")
    proposer, gamma = _proposer(args) if args.speculative else (None, 4)
    try:
        return Engine.from_path(path, backend=args.backend, dtype=args.dtype,
                                block_size=args.block_size, max_num_seqs=args.max_num_seqs,
                                max_tokens_per_step=args.max_tokens_per_step,
                                max_model_len=args.max_model_len, proposer=proposer,
                                gamma=gamma), path
    except ValueError as e:
        from lmspec.conformance.cli import CliError

        raise CliError(str(e)) from None


def _proposer(args):
    """--speculative's proposer and gamma."""
    from lmspec.conformance.cli import CliError
    from lmspec.serve import speculative as SP
    from lmspec.serve.engine import Engine

    kind, opts = parse_speculative(args.speculative)
    if kind == "ngram":
        return SP.NgramProposer(), opts["gamma"]
    path = Path(opts["draft"])
    if not path.exists():
        raise CliError(f"--speculative: no such draft folder {path}")
    d = Engine.from_path(path, backend=args.backend, dtype=args.dtype)
    runner = SP.Runner(d.config, {n: d.b.to_numpy(a) for n, a in d.p.items()},
                       backend=args.backend, dtype=args.dtype)
    return SP.DraftModelProposer(runner), opts["gamma"]


def add_parser(sub) -> None:
    def engine_args(sp):
        sp.add_argument("--model", help="a run or checkpoint folder of lmspec train, or an HF "
                                        "checkpoint directory (default: the default model, "
                                        "trained on first use)")
        sp.add_argument("--backend", default="torch_triton", help="default torch_triton")
        sp.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
        sp.add_argument("--block-size", type=int, default=16, help="KV block size (16)")
        sp.add_argument("--max-num-seqs", type=int, default=16,
                        help="sequences per step (16)")
        sp.add_argument("--max-tokens-per-step", type=int, default=256,
                        help="token budget per step, prefill chunks included (256)")
        sp.add_argument("--max-model-len", type=int, default=1024,
                        help="prompt + output tokens per request (1024)")
        sp.add_argument("--speculative", metavar="SPEC",
                        help="speculative decoding: 'ngram' (prompt lookup) or 'draft=DIR' "
                             "(a smaller model with the same vocabulary), with ',gamma=N' "
                             "drafts per step (default 4)")

    sp = sub.add_parser("serve", help="an OpenAI-compatible server (completions, chat, "
                                      "streaming) on the engine")
    engine_args(sp)
    sp.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--served-model-name", help="the model id clients send (default: the "
                                                "folder's name)")
    sp.set_defaults(fn=cmd_serve)

    sp = sub.add_parser("generate", help="stream one completion to the terminal")
    engine_args(sp)
    sp.add_argument("prompt", help="the prompt text")
    sp.add_argument("--max-tokens", type=int, default=64)
    sp.add_argument("--temperature", type=float, default=0.8)
    sp.add_argument("--top-p", type=float, default=0.95)
    sp.add_argument("--seed", type=int)
    search = sp.add_mutually_exclusive_group()
    search.add_argument("--best-of", type=int, metavar="N",
                        help="sample N completions, print the one of highest mean log-prob "
                             "(each candidate's score on stderr)")
    search.add_argument("--beam", type=int, metavar="W",
                        help="beam search of width W (deterministic: --temperature and "
                             "--top-p do not apply); the beams on stderr")
    sp.add_argument("--length-penalty", type=float, default=1.0,
                    help="beam ranking: sum log-prob / length ** this (1.0, as HF)")
    sp.set_defaults(fn=cmd_generate)


def cmd_serve(args) -> int:
    from lmspec.serve.server import serve

    engine, path = _engine(args)
    name = args.served_model_name or path.name
    print(f"lmspec: serving {name} ({path}) on http://{args.host}:{args.port}/v1",
          file=sys.stderr, flush=True)
    serve(engine, host=args.host, port=args.port, model_name=name)
    return 0


def cmd_generate(args) -> int:
    from lmspec.conformance.cli import CliError
    from lmspec.serve.engine import SamplingParams

    engine, _ = _engine(args)
    if engine.tokenizer is None:
        raise CliError("generate: this model has no tokenizer (vocab.json or tokenizer.json)")
    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                                top_p=args.top_p, seed=args.seed)
    except ValueError as e:
        raise CliError(str(e)) from None
    prompt = engine.tokenizer.encode_ordinary(args.prompt)
    if args.best_of is not None or args.beam is not None:
        return _search(engine, args, prompt, params)
    rid = engine.add_request(prompt, params)
    sys.stdout.write(args.prompt)
    while engine.has_work():
        for o in engine.step():
            if o.request_id == rid and o.text:
                sys.stdout.write(o.text)
                sys.stdout.flush()
    sys.stdout.write("\n")
    st = engine.stats
    if engine.proposer is not None:
        rate = st["drafts_accepted"] / max(st["drafts_proposed"], 1)
        print(f"lmspec: speculative ({args.speculative}): {st['drafts_accepted']}/"
              f"{st['drafts_proposed']} drafts accepted ({rate:.0%}), "
              f"{len(engine.scheduler.seqs[rid].output)} tokens in {st['steps']} steps",
              file=sys.stderr)
    return 0


def _search(engine, args, prompt: list[int], params) -> int:
    """--best-of / --beam: test-time search (lmspec.serve.search) over the engine's model."""
    from lmspec.conformance.cli import CliError
    from lmspec.serve import search
    from lmspec.serve.speculative import Runner

    if args.speculative:
        raise CliError("--speculative: not with --best-of or --beam")
    eos = engine.eos_id
    try:
        runner = Runner(engine.config, {n: engine.b.to_numpy(a) for n, a in engine.p.items()},
                        backend=args.backend, dtype=args.dtype)
        if args.best_of is not None:
            res = search.best_of_n(runner, prompt, args.best_of, params=params,
                                   seed=0 if args.seed is None else args.seed, eos_id=eos)
            ranked = [(c.tokens, f"mean log-prob {c.score:.3f}") for c in res.candidates]
            best = res.best
        else:
            beams = search.beam_search(runner, prompt, args.beam, args.max_tokens,
                                       length_penalty=args.length_penalty, eos_id=eos)
            ranked = [(b.tokens, f"score {b.score:.3f} (sum log-prob {b.sum_logprob:.3f})")
                      for b in beams]
            best = 0
    except ValueError as e:
        raise CliError(str(e)) from None
    tok = engine.tokenizer
    sys.stdout.write(args.prompt + tok.decode([t for t in ranked[best][0] if t != eos]) + "\n")
    what = "candidate" if args.best_of is not None else "beam"
    for i, (tokens, score) in enumerate(ranked):
        mark = "*" if i == best else " "
        text = tok.decode([t for t in tokens if t != eos])
        print(f"lmspec: {mark}{what} {i}: {score}: {text!r}", file=sys.stderr)
    return 0


def parse_speculative(spec: str) -> tuple[str, dict]:
    """'ngram[,gamma=N]' or 'draft=DIR[,gamma=N]' -> (kind, options)."""
    from lmspec.conformance.cli import CliError

    kind, opts = None, {"gamma": 4}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        key, _, value = part.partition("=")
        if key == "ngram" and not value:
            kind = "ngram"
        elif key == "draft" and value:
            kind, opts["draft"] = "draft", value
        elif key == "gamma" and value.isdigit() and int(value) >= 1:
            opts["gamma"] = int(value)
        else:
            raise CliError(f"--speculative: expected 'ngram' or 'draft=DIR', with ',gamma=N' "
                           f"(N >= 1); got {part!r}")
    if kind is None:
        raise CliError(f"--speculative: expected 'ngram' or 'draft=DIR', got {spec!r}")
    return kind, opts
