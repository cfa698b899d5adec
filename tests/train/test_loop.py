"""The training loop: metrics, checkpoints, a resume that continues bit-identically, and its
errors; the CLI end to end. Small corpus and model so that the file stays within seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmspec.conformance.cli import main
from lmspec.train import checkpoint as ckpt
from lmspec.train.loop import RunConfig, read_metrics, train

pytest.importorskip("torch")

SMALL = dict(model="tiny-llama", backend="torch_triton", steps=6, batch_size=4, seq_len=32,
             eval_every=3, eval_batches=2, ckpt_every=3, log_every=1, corpus_bytes=120_000,
             vocab_size=300, warmup_steps=2, valid_every=4)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("vocab-cache")


def _run(out, cache, resume=False, stop_after=None, **kw):
    return train(RunConfig(**{**SMALL, **kw}), out, resume=resume, progress=False,
                 log=lambda s: None, cache_dir=cache, stop_after=stop_after)


def _final(out):
    c = ckpt.load(ckpt.latest(out))
    return c.step, c.params, c.opt_state


def test_a_resumed_run_equals_the_uninterrupted_run_bit_for_bit(tmp_path, cache):
    _run(tmp_path / "whole", cache)
    part = tmp_path / "part"
    s = _run(part, cache, stop_after=3)
    assert s["step"] == 3 and ckpt.latest(part).name.endswith("3")
    _run(part, cache, resume=True)
    (sa, pa, oa), (sb, pb, ob) = _final(tmp_path / "whole"), _final(part)
    assert sa == sb == 6
    for n in pa:
        assert np.array_equal(pa[n], pb[n]), n
    for k in oa:
        for n in oa[k]:
            assert np.array_equal(oa[k][n], ob[k][n]), (k, n)
    rows = lambda p: [(r["step"], r["split"], r["metric"], r["value"])  # noqa: E731
                      for r in read_metrics(p / "metrics.jsonl") if r["metric"] != "tokens_per_s"]
    assert rows(tmp_path / "whole") == rows(part)  # the resumed log has no duplicate step


def test_metrics_run_json_and_the_loss_falls(tmp_path, cache):
    s = _run(tmp_path, cache, steps=12, lr=1e-2, eval_every=12)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    train_loss = [r["value"] for r in rows if r["metric"] == "loss" and r["split"] == "train"]
    assert len(train_loss) == 12
    assert np.mean(train_loss[-3:]) < np.mean(train_loss[:3])  # 12 steps at lr 1e-2 learn
    (val,) = [r for r in rows if r["split"] == "valid"]
    assert val["step"] == 12 and val["value"] == pytest.approx(s["val_loss"])
    assert 0 < val["value"] < 1.5 * s["unigram_entropy"]  # a real held-out loss, not 0
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["run"]["steps"] == 12 and info["n_vocab"] <= 300
    assert info["model_config"]["vocab_size"] == info["n_vocab"]
    assert 0 < info["unigram_entropy"] == pytest.approx(s["unigram_entropy"])
    assert {"loss", "grad_norm", "lr", "tokens_per_s"} <= {r["metric"] for r in rows}


def test_errors(tmp_path, cache):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _run(tmp_path / "empty", cache, resume=True)
    _run(tmp_path / "r", cache, steps=3)
    with pytest.raises(FileExistsError, match="resume"):
        _run(tmp_path / "r", cache, steps=3)
    with pytest.raises(ValueError, match="run config differs"):
        _run(tmp_path / "r", cache, resume=True, steps=6, lr=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        RunConfig(batch_size=0)
    with pytest.raises(ValueError, match="schedule"):
        RunConfig(schedule="linear")
    with pytest.raises(ValueError, match="warmup_steps"):
        RunConfig(steps=5, warmup_steps=5)
    with pytest.raises(ValueError, match="model"):
        _run(tmp_path / "m", cache, model="no-such-model")


def test_cli_trains_and_resumes(tmp_path, cache, capsys, monkeypatch):
    monkeypatch.setenv("LMSPEC_TRAIN_CACHE", str(cache))
    out = str(tmp_path / "cli")
    small = ["--batch-size", "2", "--seq-len", "16", "--eval-every", "2", "--ckpt-every", "2",
             "--corpus-bytes", "100000", "--valid-every", "4", "--warmup", "1", "--no-progress",
             "--json"]
    assert main(["train", "--out", out, "--steps", "2", *small]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["step"] == 2
    assert main(["train", "--out", out, "--steps", "2", *small]) == 2  # exists: no overwrite
    assert "resume" in capsys.readouterr().err
    assert main(["train", "--out", out, "--steps", "4", "--resume", *small]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 4
    assert main(["train", "--steps", "2"]) == 2  # no --out
    assert main(["train", "--out", out, "--backend", "nope"]) == 2


def test_a_checkpoint_of_one_backend_runs_in_the_other(tmp_path, cache):
    """torch_triton's checkpoint, loaded by jax_xla (and the float64 reference): the same
    loss on the same batch, to float32 rounding."""
    pytest.importorskip("jax")
    from lmspec import backends
    from lmspec.spec.model import ModelConfig

    _run(tmp_path, cache, steps=3)
    c = ckpt.load(tmp_path)
    config = ModelConfig.from_dict(c.model_config)
    rng = np.random.default_rng(0)
    tok = rng.integers(0, config.vocab_size, (2, 16))
    tgt = np.roll(tok, -1, axis=1)
    losses = {}
    for name, dt in (("torch_triton", "float32"), ("jax_xla", "float32"),
                     ("reference", "float64")):
        b = backends.load(name)
        p = {n: b.asarray(a, dt) for n, a in c.params.items()}
        losses[name] = float(b.fn("model_loss")(p, b.asarray(tok, None), b.asarray(tgt, None),
                                                config=config)[0])
    assert losses["torch_triton"] == pytest.approx(losses["reference"], rel=1e-5)
    assert losses["jax_xla"] == pytest.approx(losses["reference"], rel=1e-5)
