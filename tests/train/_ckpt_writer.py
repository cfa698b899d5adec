"""The writer that test_checkpoint.py's kill test SIGKILLs: ``python _ckpt_writer.py OUT STAGE
[PLANT]`` saves step 1, then starts step 2 and, at ``STAGE`` (a ``checkpoint.HOOK`` stage),
prints "paused" and waits to be killed. ``state(step)`` is both steps' content, for the test
too. PLANT, a bug the kill test must catch: "in-place" (step 2 written straight into its
final folder), "pointer-first" (``latest`` moved to step 2 before its folder is complete)."""

from __future__ import annotations

import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from lmspec.spec.model import ModelConfig, init_params
from lmspec.spec.train_step import TrainConfig
from lmspec.train import checkpoint as ckpt

# 2.3M parameters: 9 MB of weights and 18 MB of moments per checkpoint
CONFIG = ModelConfig(vocab_size=2048, d_model=256, n_layers=2, n_heads=4, d_ff=512)


def state(step: int) -> dict:
    """save()'s keyword arguments at ``step``: every array differs between steps."""
    params = {n: a.astype(np.float32) for n, a in init_params(CONFIG, seed=step).items()}
    opt = {"m": {n: a * np.float32(0.1) for n, a in params.items()},
           "v": {n: a * a for n, a in params.items()}, "count": np.int64(step)}
    return dict(params=params, opt_state=opt, model_config=CONFIG,
                train_config=TrainConfig(), data_state={"epoch": 0, "index": step},
                rng_state={"seed": 0}, extra={"run": "kill-test"}, backend="reference")


def _in_place(prefix: str, dir: str) -> str:
    if not prefix.startswith(ckpt.TMP + "step-"):
        return tempfile.mkdtemp(prefix=prefix, dir=dir)
    final = Path(dir) / prefix[len(ckpt.TMP):].rstrip("-")
    final.mkdir()
    return str(final)


def main(out: str, stage: str, plant: str | None = None) -> None:
    ckpt.save(out, 1, **state(1))
    print("saved 1", flush=True)
    if plant == "in-place":
        ckpt.tempfile = types.SimpleNamespace(mkdtemp=_in_place, mkstemp=tempfile.mkstemp)

    def pause(name, folder):
        if plant == "pointer-first" and name == ckpt.MODEL:
            ckpt._write_pointer(Path(out), "step-00000002")
        if name == stage:
            print("paused", flush=True)
            time.sleep(600)  # the test kills us here

    ckpt.HOOK = pause
    ckpt.save(out, 2, **state(2))
    print("finished 2 (not expected)", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
