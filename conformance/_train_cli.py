"""``lmspec train``: train a model of the catalog on the default corpus with any backend, or
print a scaling-law plan (``--plan``). The loop is lmspec.train.loop; this is its command line."""

from __future__ import annotations

import argparse
import json

from lmspec.spec._model_config import PRESETS


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def add_parser(sub) -> None:
    sp = sub.add_parser(
        "train", help="train a model on the default corpus (the stdlib's sources), or --plan",
        description="Train on the default corpus (this Python's stdlib sources, tokenized with "
                    "a byte-level BPE vocabulary trained on it), with checkpoints, JSONL "
                    "metrics and resume; or print a scaling-law plan with --plan.")
    sp.add_argument("--model", default="tiny-llama",
                    help=f"a preset ({', '.join(PRESETS)}), a config .json (lmspec's or HF's "
                         "config.json) or an HF checkpoint directory (default tiny-llama)")
    sp.add_argument("--backend", default="torch_triton", help="default torch_triton")
    sp.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    sp.add_argument("--out", help="the run's folder (checkpoints, metrics.jsonl, run.json)")
    sp.add_argument("--resume", action="store_true",
                    help="continue from the latest checkpoint in --out")
    sp.add_argument("--batch-size", type=int, default=16, help="rows per micro-batch (16)")
    sp.add_argument("--micro-batches", type=int, default=1,
                    help="micro-batches accumulated per step (1)")
    sp.add_argument("--seq-len", type=int, default=128, help="tokens per row (128)")
    sp.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (3e-3)")
    sp.add_argument("--schedule", default="cosine", choices=("constant", "cosine", "wsd"))
    sp.add_argument("--warmup", type=int, default=20, help="warmup steps (20)")
    sp.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="compute dtype (master weights stay float32)")
    sp.add_argument("--eval-every", type=int, default=50, help="validation every K steps (50)")
    sp.add_argument("--ckpt-every", type=int, default=100, help="checkpoint every K steps")
    sp.add_argument("--keep-last", type=int, default=2, help="checkpoints kept (2)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--corpus-bytes", type=int, default=2_000_000,
                    help="how much of the stdlib corpus to read (2000000)")
    sp.add_argument("--valid-every", type=int, default=20,
                    help="hold out every K-th document for validation (20)")
    sp.add_argument("--no-progress", action="store_true", help="log lines, no progress bar")
    sp.add_argument("--nproc", type=int, default=1,
                    help="data-parallel processes under torchrun (gloo; torch_triton): each "
                         "takes --micro-batches / N of every step's micro-batches, and the "
                         "run equals the one-process run (1)")
    sp.add_argument("--mesh", metavar="data=D[,model=M]",
                    help="jax_xla on a mesh of D x M devices: each step's rows split over "
                         "data, the weights (Megatron's split, experts by expert) over model; "
                         "on CPU as many host devices (XLA_FLAGS, set here)")
    sp.add_argument("--plan", action="store_true",
                    help="print a scaling-law plan for --params instead of training")
    sp.add_argument("--params", type=_positive_float, help="parameters N for --plan, e.g. 1e9")
    sp.add_argument("--tokens", type=_positive_float,
                    help="training tokens D for --plan (default: Chinchilla's optimum)")
    sp.add_argument("--plan-seq-len", type=int, default=2048,
                    help="sequence length for --plan's batch in sequences (2048)")
    sp.add_argument("--json", action="store_true", help="print the summary (or plan) as JSON")
    sp.set_defaults(fn=cmd_train)


def cmd_train(args) -> int:
    from lmspec.conformance.cli import CliError

    if args.plan:
        from lmspec.train.plan import plan

        if args.params is None:
            raise CliError("--plan needs --params, e.g. --params 1e9")
        p = plan(args.params, args.tokens, args.plan_seq_len)
        if args.json:
            print(json.dumps({"n_params": p.n_params, "tokens": p.tokens, "flops": p.flops,
                              "lr": p.lr, "batch_tokens": p.batch_tokens,
                              "batch_sequences": p.batch_sequences, "steps": p.steps,
                              "expected_loss": p.expected_loss}))
        else:
            print("\n".join(p.lines()))
        return 0
    if args.params is not None or args.tokens is not None:
        raise CliError("--params and --tokens go with --plan")
    if not args.out:
        raise CliError("train needs --out DIR (where checkpoints and metrics go)")
    from lmspec import backends
    from lmspec.train.loop import RunConfig, train

    mesh = None
    if args.mesh is not None:
        from lmspec.train.distributed import mesh_problem, parse_mesh, want_host_devices

        if args.nproc != 1:
            raise CliError("--mesh and --nproc: one or the other (a mesh run is one process)")
        try:
            mesh = parse_mesh(args.mesh)
        except ValueError as e:
            raise CliError(f"--{e}") from None
        problem = mesh_problem(args.backend, mesh, args.batch_size)
        if problem:  # refused before the environment is touched (train() checks it again)
            raise CliError(problem)
        want_host_devices(mesh)  # before the backend imports jax
    try:
        backends.load(args.backend)
    except (KeyError, backends.BackendUnavailable) as e:
        raise CliError(f"--backend {args.backend}: {e}") from None
    if args.nproc != 1:
        return _relaunch(args)
    run = RunConfig(model=args.model, backend=args.backend, steps=args.steps,
                    batch_size=args.batch_size, micro_batches=args.micro_batches,
                    seq_len=args.seq_len, lr=args.lr, schedule=args.schedule,
                    warmup_steps=args.warmup, compute_dtype=args.dtype,
                    eval_every=args.eval_every, ckpt_every=args.ckpt_every,
                    keep_last=args.keep_last, seed=args.seed,
                    corpus_bytes=args.corpus_bytes, valid_every=args.valid_every)
    try:
        summary = train(run, args.out, resume=args.resume,
                        progress=False if args.no_progress else None, mesh=mesh)
    except (FileExistsError, FloatingPointError) as e:
        raise CliError(str(e)) from None
    if args.json:
        print(json.dumps(summary))
    return 0



_FORWARDED = ("model", "backend", "steps", "out", "batch_size", "micro_batches", "seq_len", "lr",
              "schedule", "warmup", "dtype", "eval_every", "ckpt_every", "keep_last", "seed",
              "corpus_bytes", "valid_every")


def _relaunch(args) -> int:
    """--nproc N: the same command under torchrun with N processes (lmspec.train.loop runs
    data-parallel when torchrun's WORLD_SIZE is set)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from lmspec.conformance.cli import CliError
    from lmspec.train.distributed import data_parallel_problem

    n = args.nproc
    if n < 1:
        raise CliError(f"--nproc: expected >= 1, got {n}")
    problem = data_parallel_problem(args.backend, args.micro_batches, n)
    if problem:
        raise CliError(problem)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        raise CliError("--nproc: torchrun not found (it comes with torch)")
    argv = ["train"]
    for name in _FORWARDED:
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    argv += [f for f, on in (("--resume", args.resume), ("--no-progress", args.no_progress),
                             ("--json", args.json)) if on]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [torchrun, f"--nproc_per_node={n}", "--master_port=0", "--rdzv_backend=c10d",
           "--rdzv_endpoint=localhost:0", "-m", "lmspec.conformance.cli", *argv]
    return subprocess.run(cmd, env=env).returncode
