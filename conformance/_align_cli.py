"""``lmspec align sft|dpo|grpo``: an alignment stage on a synthetic task with a verifiable
answer, from an ``lmspec train`` (or earlier ``lmspec align``) run folder. The loop is
lmspec.align.loop; this is its command line."""

from __future__ import annotations

import json

from lmspec.align.tasks import TASKS

_STAGE_HELP = {
    "sft": "supervised fine-tuning: prompt-masked cross-entropy on the task's conversations",
    "dpo": "DPO on synthetic preferences (the right answer over a near miss)",
    "grpo": "GRPO with the task's verifiable reward (samples groups from the policy)",
}


def add_parser(sub) -> None:
    sp = sub.add_parser("align", help="an alignment stage: sft | dpo | grpo",
                        description="Align a trained model on a synthetic task with a "
                                    "verifiable answer: sft, then grpo (the reward rises) "
                                    "or dpo (held-out preference accuracy rises).")
    stages = sp.add_subparsers(dest="stage", required=True)
    for stage, text in _STAGE_HELP.items():
        s = stages.add_parser(stage, help=text, description=text)
        s.add_argument("--init", required=True,
                       help="the run folder (or step folder) of the starting model")
        s.add_argument("--out", required=True, help="this stage's run folder")
        if stage != "sft":
            s.add_argument("--ref", help="the frozen reference model (default: --init)")
            s.add_argument("--beta", type=float,
                           help="DPO's temperature (0.1) / GRPO's KL coefficient (0)")
            s.add_argument("--loss-type", help="dpo: sigmoid | ipo | robust; "
                                               "grpo: grpo | bnpo | dr_grpo")
        if stage == "grpo":
            s.add_argument("--group-size", type=int, default=8,
                           help="completions sampled per prompt (8)")
            s.add_argument("--epsilon", type=float, default=0.2, help="PPO clip range (0.2)")
        if stage == "dpo":
            s.add_argument("--label-smoothing", type=float, default=0.0,
                           help="cDPO / robust DPO's epsilon (0)")
        s.add_argument("--task", default="reverse", choices=sorted(TASKS))
        s.add_argument("--backend", default="torch_triton", help="default torch_triton")
        s.add_argument("--steps", type=int, default=100, help="optimizer steps (100)")
        s.add_argument("--batch-size", type=int, default=16,
                       help="conversations / pairs / prompts per step (16)")
        s.add_argument("--lr", type=float, help="peak learning rate (sft 1e-3, dpo and "
                                                "grpo 2e-4)")
        s.add_argument("--schedule", default="constant", choices=("constant", "cosine"))
        s.add_argument("--warmup", type=int, default=5, help="warmup steps (5)")
        s.add_argument("--max-new-tokens", type=int, default=10,
                       help="answer length when sampling and evaluating (10)")
        s.add_argument("--eval-every", type=int, default=20, help="evaluation every K steps")
        s.add_argument("--eval-size", type=int, default=64, help="held-out prompts (64)")
        s.add_argument("--ckpt-every", type=int, default=50, help="checkpoint every K steps")
        s.add_argument("--keep-last", type=int, default=2, help="checkpoints kept (2)")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its latest checkpoint")
        s.add_argument("--no-progress", action="store_true", help="log lines, no progress bar")
        s.add_argument("--json", action="store_true", help="print the summary as JSON")
        s.set_defaults(fn=cmd_align)


def cmd_align(args) -> int:
    from lmspec import backends
    from lmspec.align.loop import AlignConfig, align
    from lmspec.conformance.cli import CliError

    try:
        backends.load(args.backend)
    except (ValueError, backends.BackendUnavailable) as e:
        raise CliError(f"--backend {args.backend}: {e}") from None
    kw = {k: getattr(args, k) for k in ("ref", "beta", "loss_type", "group_size", "epsilon",
                                        "label_smoothing") if hasattr(args, k)}
    try:
        cfg = AlignConfig(stage=args.stage, init=args.init, task=args.task,
                          backend=args.backend, steps=args.steps, batch_size=args.batch_size,
                          lr=args.lr, schedule=args.schedule, warmup_steps=args.warmup,
                          max_new_tokens=args.max_new_tokens, eval_every=args.eval_every,
                          eval_size=args.eval_size, ckpt_every=args.ckpt_every,
                          keep_last=args.keep_last, seed=args.seed, **kw)
        summary = align(cfg, args.out, resume=args.resume,
                        progress=False if args.no_progress else None)
    except (ValueError, FileExistsError, FileNotFoundError, FloatingPointError) as e:
        raise CliError(str(e)) from None
    if args.json:
        print(json.dumps(summary))
    return 0
