"""Training checkpoints (train/checkpoint.py): bit-exact round trips of every dtype, the
``latest`` pointer and pruning, errors that name the file, a writer SIGKILLed in the middle of
a save and one interrupted by an exception, the weights file read by spec/_checkpoint.py and
the safetensors package, and one export to a Hugging Face directory."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from lmspec.spec import _checkpoint as st
from lmspec.spec.model import ModelConfig, init_params
from lmspec.spec.train_step import Schedule, TrainConfig, init_opt_state
from lmspec.train import checkpoint as C

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import _ckpt_writer as writer  # noqa: E402

# n_kv_heads and head_dim explicit, as config_from_hf reads them back
TINY = ModelConfig(vocab_size=13, d_model=8, n_layers=2, n_heads=2, d_ff=12, n_kv_heads=2,
                   head_dim=4, name="tiny")
TC = TrainConfig(lr=3e-3, schedule=Schedule("cosine", 2, 10, 0.1))


def _same(a, b) -> bool:
    """Bit-exact: dtype, shape and bytes (NaN payloads and signed zeros included)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _same_tree(a, b) -> bool:
    if isinstance(a, dict) or isinstance(b, dict):
        return (isinstance(a, dict) and isinstance(b, dict) and list(a) == list(b)
                and all(_same_tree(a[k], b[k]) for k in a))
    return _same(a, b)


def test_the_bit_exact_comparison_catches_the_plants():
    x = np.array([1.0, -0.0, np.nan, 3e-45], np.float32)
    assert _same(x, x.copy())
    ulp = x.copy()
    ulp[0] = np.nextafter(ulp[0], np.float32(2))
    payload = x.copy()
    payload.view(np.uint32)[2] ^= 1  # another NaN
    zero = x.copy()
    zero[1] = 0.0
    for wrong in (ulp, payload, zero, x.view(np.int32), x.reshape(2, 2),
                  x.astype(ml_dtypes.bfloat16)):
        assert not _same(x, wrong)
    assert not _same_tree({"a": {"b": x}}, {"a": {"b": ulp}})
    assert not _same_tree({"a": x, "b": x}, {"b": x, "a": x})  # the order is kept too


def _state(dtype=np.float32, seed=0) -> dict:
    """Parameters with NaN, -0, inf and a subnormal; moments; arrays of other dtypes."""
    params = {n: a.astype(dtype) for n, a in init_params(TINY, seed, std=0.5).items()}
    params["embed"].flat[:4] = [np.nan, -0.0, np.inf, 1e-40]
    opt = init_opt_state(params, TINY)
    rng = np.random.default_rng(seed)
    for group in ("m", "v"):
        for n, a in opt[group].items():
            opt[group][n] = rng.standard_normal(a.shape).astype(np.float32)
    opt["extra"] = {"bf16": {"embed": params["embed"].astype(ml_dtypes.bfloat16)},
                    "ids": np.arange(5, dtype=np.int32), "big": np.array([2**62], np.int64),
                    "mask": np.array([True, False]), "none": np.zeros((0, 3), np.uint8),
                    "empty": {}}
    opt["count"] = np.int64(7)  # a step counter: a NumPy scalar, back as a 0-d array
    return {"params": params, "opt_state": opt}


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    s = _state(dtype)
    g = np.random.default_rng(3)
    g.random(5)
    rng_state = g.bit_generator.state
    extra = {"a": [1, 2.5, {"b": None, "c": "x", "d": True}], "big": 2**70, "f": 0.1,
             "tiny": -1e-300, "text": "é🚀\n"}
    data_state = {"seed": 0, "epoch": 2, "index": 5, "n_rows": 40, "rows_per_step": 4,
                  "fingerprint": "00ff"}
    path = C.save(tmp_path, 12, **s, model_config=TINY, train_config=TC,
                  data_state=data_state, rng_state=rng_state, extra=extra,
                  backend="torch_triton")
    assert path == tmp_path / "step-00000012" and C.latest(tmp_path) == path
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors",
                                                      "optimizer.safetensors", "state.json"]
    for where in (tmp_path, path):  # the run folder (its latest) or the step folder
        ck = C.load(where)
        assert ck.path == path and ck.step == 12 and ck.backend == "torch_triton"
        assert _same_tree(ck.params, s["params"])
        want_opt = {**s["opt_state"], "count": np.asarray(s["opt_state"]["count"])}
        assert _same_tree(ck.opt_state, want_opt)
        assert ck.opt_state["count"].shape == () and ck.opt_state["extra"]["empty"] == {}
        assert ck.extra == extra and ck.data_state == data_state
        assert ModelConfig.from_dict(ck.model_config) == TINY
        assert TrainConfig.from_dict(ck.train_config) == TC
        assert ck.lmspec_version == metadata.version("lmspec")
    h = np.random.default_rng()
    h.bit_generator.state = ck.rng_state  # the generator resumes where it stood
    assert np.array_equal(h.random(4), g.random(4))
    on_disk = st.read_safetensors(path / "model.safetensors")  # names sorted in the file
    assert _same_tree(dict(sorted(on_disk.items())), dict(sorted(s["params"].items())))


def test_the_weights_file_alone_and_an_hf_export(tmp_path):
    s = _state(np.float32)
    s["params"]["embed"].flat[:4] = 0.5  # finite weights for the HF round trip
    path = C.save(tmp_path / "run", 3, **s, model_config=TINY, train_config=None)
    safetensors = pytest.importorskip("safetensors")
    from safetensors.numpy import load_file

    other = load_file(path / "model.safetensors")  # the safetensors package reads it too
    assert len(other) == len(s["params"])
    assert _same_tree({n: other[n] for n in s["params"]}, s["params"])
    with safetensors.safe_open(path / "model.safetensors", "np") as f:
        meta = f.metadata()
    assert ModelConfig.from_dict(json.loads(meta["lmspec_model_config"])) == TINY
    hf = C.export_hf(tmp_path / "run", tmp_path / "hf")
    config, params = st.load_hf_dir(hf)
    assert config == TINY.replace(name="llama")  # config_from_hf names it by model_type
    assert _same_tree(params, s["params"])


def test_latest_points_at_the_newest_and_keep_last_prunes(tmp_path):
    s = _state()
    kw = dict(**s, model_config=TINY, train_config=TC)
    for step in range(1, 6):
        C.save(tmp_path, step, **kw, keep_last=2)
        assert C.latest(tmp_path) == C.step_dir(tmp_path, step)
        assert (tmp_path / "latest").read_text() == f"step-{step:08d}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000004",
                                                          "step-00000005"]
    C.save(tmp_path, 3, **kw, keep_last=2)  # the newest written, not the highest step
    assert C.latest(tmp_path).name == "step-00000003" and C.load(tmp_path).step == 3
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000003",
                                                               "step-00000005"]
    with pytest.raises(FileExistsError, match="latest"):
        C.save(tmp_path, 3, **kw)
    (tmp_path / "latest").unlink()  # no pointer: the highest step folder
    assert C.latest(tmp_path).name == "step-00000005"
    assert C.latest(tmp_path / "step-00000005") is None  # a step folder holds no checkpoints
    assert C.latest(tmp_path / "nowhere") is None
    (tmp_path / "latest").write_text("../elsewhere\n")
    with pytest.raises(ValueError, match="latest"):
        C.latest(tmp_path)
    (tmp_path / "latest").write_text("step-00000009\n")
    with pytest.raises(FileNotFoundError, match="step-00000009"):
        C.latest(tmp_path)
    C.save(tmp_path, 6, **kw)  # a save repairs a broken pointer
    assert C.latest(tmp_path).name == "step-00000006"
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="keep_last"):
            C.save(tmp_path / "k", 1, **kw, keep_last=bad)


@pytest.fixture
def saved(tmp_path):
    s = _state()
    return C.save(tmp_path, 1, **s, model_config=TINY, train_config=TC), s


def test_missing_and_corrupt_files_are_named(saved, tmp_path):
    path, s = saved
    model, opt, state = (path / n for n in ("model.safetensors", "optimizer.safetensors",
                                            "state.json"))
    good = {p: p.read_bytes() for p in (model, opt, state)}

    def restore():
        for p, b in good.items():
            p.write_bytes(b)

    opt.unlink()
    with pytest.raises(FileNotFoundError, match="optimizer.safetensors"):
        C.load(path)
    restore()
    model.write_bytes(good[model][:len(good[model]) // 2])  # truncated
    with pytest.raises(ValueError, match=r"model\.safetensors: \d+ bytes"):
        C.load(path)
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable"):
        C.load(path, verify=False)  # the reader itself names the file
    model.write_bytes(good[model][:5])
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable"):
        C.load(path, verify=False)
    flipped = bytearray(good[model])
    flipped[-3] ^= 0x40  # a bit of the last tensor
    model.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"model\.safetensors: SHA-256"):
        C.load(path)
    renamed = dict(s["params"])
    renamed["embedding"] = renamed.pop("embed")
    st.write_safetensors(model, renamed)  # a tensor the manifest does not list
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'embed' missing"):
        C.load(path, verify=False)
    restore()
    state.unlink()
    with pytest.raises(FileNotFoundError, match="state.json"):
        C.load(path)
    state.write_text('{"format": "lmspec-checkpoint", ')
    with pytest.raises(ValueError, match="state.json: not valid JSON"):
        C.load(path)
    state.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="state.json: not an lmspec checkpoint"):
        C.load(path)
    restore()
    assert C.load(path).step == 1
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        C.load(tmp_path / "empty")


def test_names_shapes_and_dtypes_against_the_callers_expectation(saved):
    path, s = saved
    p, o = s["params"], s["opt_state"]
    C.load(path, expect_params=p, expect_opt_state=o)
    without = {k: v for k, v in p.items() if k != "embed"}
    cases = [({"expect_params": without}, r"model\.safetensors.*unexpected \['embed'\]"),
             ({"expect_params": {**p, "head": p["embed"]}}, r"missing \['head'\]"),
             ({"expect_params": {**p, "embed": p["embed"].T}}, r"tensor 'embed' is float32"),
             ({"expect_params": {**p, "embed": p["embed"].astype(np.float64)}},
              "expected float64"),
             ({"expect_opt_state": {**o, "m": {**o["m"], "embed": np.zeros(3, np.float32)}}},
              r"optimizer\.safetensors: tensor 'm/embed'"),
             ({"expect_opt_state": init_opt_state(p, TINY.replace(n_layers=1))},
              r"optimizer\.safetensors.*unexpected"),
             ({"expect_opt_state": {**o, "count": {}}}, r"'count': expected a mapping")]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            C.load(path, **kw)


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    s = _state()
    p, o = s["params"], s["opt_state"]
    out = tmp_path / "never"
    cases = [({"params": {k: v for k, v in p.items() if k != "embed"}}, ValueError,
              r"params: .*missing \['embed'\]"),
             ({"params": {**p, "embed": p["embed"][:3]}}, ValueError, r"params\['embed'\]"),
             ({"opt_state": {**o, "m": {**o["m"], "embed": [0.0]}}}, TypeError,
              r"opt_state\['m'\]\['embed'\]: expected a NumPy array"),
             ({"opt_state": {**o, "z": np.zeros(2, np.complex64)}}, TypeError, "complex64"),
             ({"opt_state": {**o, "a/b": np.zeros(2)}}, ValueError, "'/'"),
             ({"extra": {"loss": np.float32(1.0)}}, TypeError, "extra"),
             ({"extra": {"loss": float("nan")}}, TypeError, "extra"),
             ({"model_config": {"vocab_size": 13}}, ValueError, "model_config"),
             ({"model_config": "tiny"}, TypeError, "model_config"),
             ({"backend": 3}, TypeError, "backend")]
    for change, exc, match in cases:
        kw = {**s, "model_config": TINY, "train_config": TC, **change}
        with pytest.raises(exc, match=match):
            C.save(out, 1, **kw)
    for step in (-1, 1.0, True):
        with pytest.raises(ValueError, match="step"):
            C.save(out, step, **s, model_config=TINY, train_config=TC)
    assert not out.exists()


def _listing(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): (p.read_bytes() if p.is_file() else b"")
            for p in sorted(out.rglob("*"))}


@pytest.mark.parametrize("stage", ["model.safetensors", "optimizer.safetensors",
                                   "state.json", "write"])
def test_an_exception_in_the_writer_leaves_nothing_half_written(saved, tmp_path, stage,
                                                                monkeypatch):
    _, s = saved
    before = _listing(tmp_path)

    def fail(name, folder):
        if name == stage:
            raise KeyboardInterrupt(stage)  # BaseException: a Ctrl-C mid-save

    real = st.write_safetensors

    def disk_full(path, tensors, metadata=None):  # half a file, then ENOSPC
        real(path, tensors, metadata)
        if Path(path).name == "optimizer.safetensors":
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[:len(data) // 2])
            raise OSError(28, "No space left on device")

    if stage == "write":
        monkeypatch.setattr(C.st, "write_safetensors", disk_full)
    else:
        monkeypatch.setattr(C, "HOOK", fail)
    with pytest.raises((KeyboardInterrupt, OSError)):
        C.save(tmp_path, 2, **s, model_config=TINY, train_config=TC)
    assert _listing(tmp_path) == before  # no step-2, no temporary folder, pointer unchanged
    assert C.load(tmp_path).step == 1


def test_an_exception_after_the_rename_leaves_a_complete_checkpoint(saved, tmp_path,
                                                                     monkeypatch):
    _, s = saved

    def fail(name, folder):
        if name == "renamed":
            raise KeyboardInterrupt

    monkeypatch.setattr(C, "HOOK", fail)
    with pytest.raises(KeyboardInterrupt):
        C.save(tmp_path, 2, **s, model_config=TINY, train_config=TC)
    assert C.latest(tmp_path).name == "step-00000001"  # not committed: latest unchanged
    assert C.load(tmp_path / "step-00000002").step == 2  # but complete, never partial
    monkeypatch.setattr(C, "HOOK", None)
    C.save(tmp_path, 2, **s, model_config=TINY, train_config=TC)  # replaces the orphan
    assert C.load(tmp_path).step == 2 and not list(tmp_path.glob(".tmp-*"))


def _kill_writer(out: Path, stage: str, plant: str | None = None) -> None:
    """Run _ckpt_writer.py: step 1 saved, step 2 started; SIGKILL it where it pauses."""
    cmd = [sys.executable, str(HERE / "_ckpt_writer.py"), str(out), stage, *([plant] * bool(
        plant))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, proc.kill)  # a writer that never pauses fails the test
    watchdog.start()
    try:
        lines = [proc.stdout.readline().strip() for _ in range(2)]
        assert lines == ["saved 1", "paused"], (lines, proc.stderr.read() if
                                                 proc.poll() is not None else "")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def check_survivor(out: Path) -> None:
    """After a killed save of step 2: step 1 is what a reader gets, intact, and every
    ``step-*`` folder a reader could list is complete."""
    ck = C.load(out)
    assert ck.step == 1 and C.latest(out).name == "step-00000001"
    one = writer.state(1)
    assert _same_tree(ck.params, one["params"])
    assert _same(ck.opt_state["v"]["embed"], one["opt_state"]["v"]["embed"])
    for folder in out.glob("step-*"):
        C.load(folder)  # raises on a partial folder


@pytest.mark.parametrize("stage", ["model.safetensors", "renamed"])
def test_a_writer_killed_mid_save_leaves_the_previous_checkpoint(tmp_path, stage):
    out = tmp_path / "run"
    _kill_writer(out, stage)
    leftovers = list(out.glob(".tmp-*"))
    if stage == "model.safetensors":  # killed inside the temporary folder
        (tmp,) = leftovers
        assert sorted(p.name for p in tmp.iterdir()) == ["model.safetensors"]
        assert not (out / "step-00000002").exists()
    else:  # killed between the rename and the pointer: step 2 complete, not committed
        assert not leftovers and (out / "step-00000002" / "state.json").exists()
    check_survivor(out)
    two = writer.state(2)
    C.save(out, 2, **two)  # the next save succeeds and cleans the leftover
    assert not list(out.glob(".tmp-*"))
    assert sorted(p.name for p in out.iterdir()) == ["latest", "step-00000001",
                                                     "step-00000002"]
    ck = C.load(out)
    assert ck.step == 2 and _same_tree(ck.params, two["params"])
    assert _same(ck.opt_state["count"], np.asarray(np.int64(2)))


@pytest.mark.parametrize("plant", ["in-place", "pointer-first"])
def test_the_kill_test_catches_the_plants(tmp_path, plant):
    out = tmp_path / "run"
    _kill_writer(out, "model.safetensors", plant)
    with pytest.raises((AssertionError, FileNotFoundError, ValueError)):
        check_survivor(out)
