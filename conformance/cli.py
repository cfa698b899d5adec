"""The ``lmspec`` command line: list, conform, bench, report, replay, tokenizer, model."""

from __future__ import annotations

import argparse
import fnmatch
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _stems_matching(pattern: str | None) -> list[str]:
    from lmspec.spec import stems

    if not pattern:
        return list(stems())
    chosen = [s for s in stems() for p in pattern.split(",") if fnmatch.fnmatch(s, p.strip())]
    if not chosen:
        raise CliError(f"--component {pattern!r} matches no component; known: {', '.join(stems())}")
    return sorted(set(chosen))


def _pytest(args: list[str], env: dict[str, str]) -> int:
    import pytest

    os.environ.update(env)
    base = ["-p", "no:cacheprovider", "--import-mode=importlib", f"--rootdir={HERE}",
            "-c", os.devnull, "-o", "python_files=test_*.py bench_*.py"]
    return int(pytest.main(base + args))


def cmd_list(ns: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lmspec import backends
    from lmspec.spec import component, stems

    names = ns.backend or list(backends.available())
    loaded, header = {}, ["component"]
    for name in names:
        try:
            loaded[name] = backends.load(name)
            header.append(name)
        except backends.BackendUnavailable as e:
            header.append(f"{name} (unavailable)")
            print(f"note: {e}", file=sys.stderr)
    rows = []
    for stem in stems():
        row = [stem]
        for name in names:
            b = loaded.get(name)
            if b is None:
                row.append("-")
            elif not b.has(stem):
                row.append("not implemented")
            elif not component(stem).inputs:  # dtype-free (tokenizer, bpe_train)
                row.append("yes")
            else:
                dts = [d for d in b.dtypes if b.has(stem, d)]
                grad = "+grad" if component(stem).differentiable and b.has_vjp(stem) else ""
                row.append(" ".join(dts) + (f" {grad}" if grad else ""))
        rows.append(row)
    print(tabulate(rows, headers=header))
    return 0


def cmd_conform(ns: argparse.Namespace) -> int:
    files = [str(HERE / f"test_{s}.py") for s in _stems_matching(ns.component)]
    args = [*files, "-q", "--profile", ns.profile]
    for b in ns.backend or []:
        args += ["--backend", b]
    for d in ns.dtype or []:
        args += ["--dtype", d]
    if ns.k:
        args += ["-k", ns.k]
    if ns.exitfirst:
        args.append("-x")
    out = Path(ns.results)
    env = {"LMSPEC_RESULTS": str(out)}
    print(f"lmspec conform: {len(files)} components, profile {ns.profile}, results in {out}/",
          flush=True)
    code = _pytest(args, env)
    if code == 5:
        raise CliError("no conformance test was selected: check --backend, --dtype and -k")
    if code in (2, 3, 4):
        return code
    if not ns.no_report:
        from lmspec.reports import render

        paths = render.render(out)
        print(f"report: {', '.join(str(p) for p in paths)}")
    return code


def cmd_bench(ns: argparse.Namespace) -> int:
    from lmspec.reports import bench

    code = bench.run(ns.backend or [], Path(ns.results),
                     components=_stems_matching(ns.component) if ns.component else None,
                     quick=ns.quick)
    if (Path(ns.results) / "bench.jsonl").exists():
        from lmspec.reports import render

        print(f"report: {', '.join(str(p) for p in render.render(Path(ns.results)))}")
    return code


def cmd_report(ns: argparse.Namespace) -> int:
    from lmspec.reports import render

    out = Path(ns.results)
    runs = [Path(r) for r in ns.runs or []]
    for r in runs:
        if not (r / "metrics.jsonl").exists():
            raise CliError(f"--runs {r}: no metrics.jsonl there (expected the folder of an "
                           "`lmspec train` or `lmspec align` run)")
    if not runs and not any((out / f).exists() for f in ("conformance.jsonl", "bench.jsonl")):
        raise CliError(f"no results in {out}/: run `lmspec conform` (or `lmspec bench`) first, "
                       "or pass --runs")
    out.mkdir(parents=True, exist_ok=True)
    for p in render.render(out, runs):
        print(p)
    return 0


def cmd_replay(ns: argparse.Namespace) -> int:
    import pytest
    from hypothesis.errors import UnsatisfiedAssumption

    from lmspec import backends
    from lmspec.conformance import _check

    path = Path(ns.case)
    if not path.exists():
        raise CliError(f"case: no such file {path}")
    meta, case = _check.load_case(path)
    # "load": how the failing run loaded its backend (an import path for a user's own)
    backend = backends.load(ns.backend or meta.get("load", meta["backend"]))
    target = _check.Target(backend, meta["dtype"])
    print(f"replaying {meta['stem']} {meta['test']} on {target}: {case.describe()}")
    try:
        if meta["test"] == "forward":
            _check.check_forward(target, meta["stem"], case)
        else:
            _check.check_backward(target, meta["stem"], case, int(meta["ct_seed"]))
    except pytest.fail.Exception as e:
        print(str(e))
        return 1
    except pytest.skip.Exception as e:
        print(f"skipped: {e}")
        return 1
    except UnsatisfiedAssumption:
        print(f"outside the {meta['dtype']} domain: the naive evaluation overflows there")
        return 1
    print("passes")
    return 0


def cmd_triton_aot(args) -> int:
    """In a process of its own: this one may have imported triton in interpreter mode."""
    import importlib.util

    missing = [m for m in ("torch", "triton") if importlib.util.find_spec(m) is None]
    if missing:
        raise CliError(f"triton-aot needs {' and '.join(missing)}: pip install -e '.[torch]'")
    cmd = [sys.executable, "-m", "lmspec.backends.torch_triton._aot",
           "--out", str(Path(args.results) / "triton_aot.jsonl")]
    cmd += [f"--arch={a}" for a in args.arch or ()]
    cmd += [f"--workload={w}" for w in args.workload or ()]
    return subprocess.run(cmd, env={**os.environ, "TRITON_INTERPRET": "0"}).returncode


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmspec", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, results_default="results"):
        sp.add_argument("--backend", action="append",
                        help="backend name, entry point or dotted path (repeatable); "
                             "default: every installed backend")
        sp.add_argument("--component", help="component glob(s), comma-separated, e.g. 'rms*,sdpa'")
        sp.add_argument("--results", default=results_default, help="results folder")

    sp = sub.add_parser("list", help="components x backends")
    sp.add_argument("--backend", action="append")
    sp.set_defaults(fn=cmd_list)

    sp = sub.add_parser("conform", help="run the conformance suite, then write the report")
    common(sp)
    sp.add_argument("--dtype", action="append", help="restrict to dtypes (repeatable)")
    sp.add_argument("--profile", default="ci", choices=("smoke", "ci", "thorough"))
    sp.add_argument("-k", help="pytest -k expression (test names)")
    sp.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    sp.add_argument("--no-report", action="store_true")
    sp.set_defaults(fn=cmd_conform)

    sp = sub.add_parser("bench", help="run benchmarks and check the speed gates")
    common(sp)
    sp.add_argument("--quick", action="store_true", help="small shapes, few rounds (smoke)")
    sp.set_defaults(fn=cmd_bench)

    sp = sub.add_parser("report", help="render results/ as markdown and HTML")
    sp.add_argument("--results", default="results")
    sp.add_argument("--runs", nargs="+", metavar="DIR",
                    help="training / alignment run folders to plot (lmspec train, lmspec align)")
    sp.set_defaults(fn=cmd_report)

    sp = sub.add_parser("replay", help="re-run a saved failing case (path printed by a failure)")
    sp.add_argument("case", help="the .json file of a saved case")
    sp.add_argument("--backend", help="replay against another backend")
    sp.set_defaults(fn=cmd_replay)

    sp = sub.add_parser("triton-aot", help="compile every Triton kernel for a GPU "
                                           "architecture, without a GPU (registers, spills, "
                                           "shared memory)")
    sp.add_argument("--arch", type=int, action="append",
                    help="compute capability, e.g. 90 (H100/H200) or 80 (A100); repeatable "
                         "(default 90)")
    sp.add_argument("--workload", action="append", help="only these workloads (repeatable)")
    sp.add_argument("--results", default="results", help="results folder")
    sp.set_defaults(fn=cmd_triton_aot)

    from lmspec.conformance import _tokenizer_cli  # lmspec tokenizer train|encode|decode

    _tokenizer_cli.add_parser(sub)
    from lmspec.conformance import _model_cli  # lmspec model inspect (imports no torch)

    _model_cli.add_parser(sub)
    from lmspec.conformance import _train_cli  # lmspec train (imports the loop on use)

    _train_cli.add_parser(sub)
    from lmspec.conformance import _serve_cli  # lmspec serve | generate

    _serve_cli.add_parser(sub)
    from lmspec.conformance import _align_cli  # lmspec align sft|dpo|grpo

    _align_cli.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        return ns.fn(ns)
    except CliError as e:
        print(f"lmspec: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, RuntimeError, FileNotFoundError) as e:
        print(f"lmspec: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m: run the imported module's main, so that the CliError
    # raised by the subcommands (which import lmspec.conformance.cli) is the one main catches
    from lmspec.conformance.cli import main as _main

    sys.exit(_main())
