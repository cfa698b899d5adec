"""The alignment stages end to end on a tiny pre-trained model: sft, dpo and grpo write their
metrics and checkpoints, resume bit-identically, refuse bad input by name, run from the CLI
and on the JAX backend, and the report plots their curves. (That the stages learn is shown
by the longer run the README gives, not here: these runs take seconds.)"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lmspec.align.loop import AlignConfig, align
from lmspec.conformance.cli import main
from lmspec.train import checkpoint as ckpt
from lmspec.train.loop import RunConfig, read_metrics, train

pytest.importorskip("torch")

TINY = dict(eval_every=2, eval_size=4, log_every=1, ckpt_every=2, batch_size=3,
            max_new_tokens=4, seq_len=48, warmup_steps=0)


@pytest.fixture(scope="module")
def pre(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    train(RunConfig(model="tiny-llama", steps=4, batch_size=4, seq_len=32, eval_every=4,
                    eval_batches=1, ckpt_every=4, corpus_bytes=120_000, vocab_size=300,
                    warmup_steps=1, valid_every=4), out, progress=False, log=lambda s: None,
          cache_dir=out / "cache")
    return out


def _align(out, resume=False, stop_after=None, **kw):
    return align(AlignConfig(**{**TINY, **kw}), out, resume=resume, progress=False,
                 log=lambda s: None, stop_after=stop_after)


def _metric(out, split, metric):
    return [(r["step"], r["value"]) for r in read_metrics(out / "metrics.jsonl")
            if r["split"] == split and r["metric"] == metric]


def test_sft(pre, tmp_path):
    sft = tmp_path / "sft"
    s = _align(sft, stage="sft", init=str(pre), steps=4)
    assert s["step"] == 4 and ckpt.latest(sft).name.endswith("4")
    assert [st for st, _ in _metric(sft, "valid", "reward")] == [0, 2, 4]
    loss = [v for _, v in _metric(sft, "train", "loss")]
    assert len(loss) == 4 and loss[-1] < loss[0]
    info = json.loads((sft / "run.json").read_text())
    assert info["align"]["stage"] == "sft" and (sft / "vocab.json").exists()


def test_sft_then_dpo_and_grpo(pre, tmp_path):
    sft = tmp_path / "sft"
    _align(sft, stage="sft", init=str(pre), steps=4)

    dpo = tmp_path / "dpo"
    s = _align(dpo, stage="dpo", init=str(sft), steps=2)
    (first,) = [v for st, v in _metric(dpo, "train", "loss") if st == 1]
    assert first == pytest.approx(np.log(2), abs=1e-5)  # pi == pi_ref at the first step
    assert {"valid_reward_accuracy", "valid_policy_accuracy"} <= set(s)
    assert json.loads((dpo / "run.json").read_text())["stage_settings"]["beta"] == 0.1

    grpo = tmp_path / "grpo"
    s = _align(grpo, stage="grpo", init=str(sft), steps=2, group_size=2, beta=0.05)
    rewards = _metric(grpo, "train", "reward")
    assert len(rewards) == 2 and all(0 <= v <= 1 for _, v in rewards)
    assert all(0 < v <= 4 for _, v in _metric(grpo, "train", "completion_len"))
    assert all(v >= 0 for _, v in _metric(grpo, "train", "kl"))  # k3 is >= 0


def test_a_resumed_grpo_run_equals_the_uninterrupted_run(pre, tmp_path):
    kw = dict(stage="grpo", init=str(pre), steps=4, group_size=2, lr=1e-2)
    _align(tmp_path / "whole", **kw)
    part = tmp_path / "part"
    assert _align(part, stop_after=2, **kw)["step"] == 2
    _align(part, resume=True, **kw)
    a, b = (ckpt.load(ckpt.latest(tmp_path / d)) for d in ("whole", "part"))
    assert a.step == b.step == 4
    for n in a.params:
        assert np.array_equal(a.params[n], b.params[n]), n
    rows = lambda p: [(r["step"], r["split"], r["metric"], r["value"])  # noqa: E731
                      for r in read_metrics(p / "metrics.jsonl") if r["metric"] != "step_s"]
    assert rows(tmp_path / "whole") == rows(part)
    assert a.params["embed"].tolist() != ckpt.load(ckpt.latest(pre)).params["embed"].tolist()


def test_errors(pre, tmp_path):
    with pytest.raises(ValueError, match="stage"):
        AlignConfig(stage="ppo", init=str(pre))
    with pytest.raises(ValueError, match="group_size"):
        AlignConfig(stage="grpo", init=str(pre), group_size=1)
    with pytest.raises(ValueError, match="loss_type"):
        AlignConfig(stage="dpo", init=str(pre), loss_type="dr_grpo")
    with pytest.raises(ValueError, match="task"):
        AlignConfig(stage="sft", init=str(pre), task="chess")
    with pytest.raises(ValueError, match="beta"):
        AlignConfig(stage="dpo", init=str(pre), beta=0.0)
    with pytest.raises(FileNotFoundError, match="init"):
        _align(tmp_path / "x", stage="sft", init=str(tmp_path / "nowhere"))
    bare = tmp_path / "bare"
    shutil.copytree(pre, bare, ignore=shutil.ignore_patterns("vocab.json"))
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        _align(tmp_path / "y", stage="sft", init=str(bare))
    out = tmp_path / "z"
    _align(out, stage="sft", init=str(pre), steps=2)
    with pytest.raises(FileExistsError, match="resume"):
        _align(out, stage="sft", init=str(pre), steps=2)
    with pytest.raises(ValueError, match="only steps may change"):
        _align(out, resume=True, stage="sft", init=str(pre), steps=4, lr=0.5)


def test_cli_and_report(pre, tmp_path, capsys):
    out = tmp_path / "sft"
    rc = main(["align", "sft", "--init", str(pre), "--out", str(out), "--steps", "2",
               "--batch-size", "2", "--eval-every", "2", "--eval-size", "2",
               "--max-new-tokens", "3", "--no-progress", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2 and "valid_reward" in summary
    assert main(["align", "sft", "--init", str(tmp_path / "nowhere"), "--out",
                 str(tmp_path / "g"), "--no-progress"]) == 2
    assert "init: no such folder" in capsys.readouterr().err
    rc = main(["report", "--results", str(tmp_path / "r"), "--runs", str(pre), str(out)])
    assert rc == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "align sft on reverse" in md and "valid reward" in md and "train loss" in md
    assert main(["report", "--results", str(tmp_path / "r"), "--runs", str(tmp_path)]) == 2


def test_grpo_on_jax(pre, tmp_path):
    pytest.importorskip("jax")
    s = _align(tmp_path / "g", stage="grpo", init=str(pre), steps=1, group_size=2,
               batch_size=2, backend="jax_xla", eval_every=1, eval_size=2)
    assert s["step"] == 1 and 0 <= s["valid_reward"] <= 1
