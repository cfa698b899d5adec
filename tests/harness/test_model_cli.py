"""``lmspec model inspect``: presets and checkpoint directories, text and JSON, errors as one
line with exit status 2."""

from __future__ import annotations

import json

import pytest

from lmspec.conformance.cli import main
from lmspec.spec import _checkpoint as ck
from lmspec.spec.model import (
    active_params_per_token,
    init_params,
    kv_cache_bytes_per_token,
    n_params,
    preset,
)


def test_inspect_a_preset_as_json_matches_the_spec_helpers(capsys):
    assert main(["model", "inspect", "tiny-moe", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    c = preset("tiny-moe")
    assert info["n_params"] == n_params(c)
    assert info["active_params_per_token"] == active_params_per_token(c) < n_params(c)
    assert info["kv_cache"] == kv_cache_bytes_per_token(c)
    assert info["config"]["moe"]["n_experts"] == 8


def test_inspect_a_preset_as_text(capsys):
    assert main(["model", "inspect", "tiny-llama", "--bytes-per-element", "1"]) == 0
    out = capsys.readouterr().out
    c = preset("tiny-llama")
    assert f"parameters: {n_params(c):,}" in out
    kv = kv_cache_bytes_per_token(c, 1)["bytes_per_token"]
    assert f"KV cache per token (gqa, 1.0 bytes/element): {kv:,.0f} bytes" in out


def test_inspect_a_checkpoint_directory(tmp_path, capsys):
    c = ck.config_from_hf({"model_type": "qwen3", "vocab_size": 16, "hidden_size": 8,
                           "intermediate_size": 12, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4})
    ck.save_hf_dir(tmp_path / "ckpt", c, init_params(c), "qwen3")
    assert main(["model", "inspect", str(tmp_path / "ckpt"), "--check-tensors"]) == 0
    out = capsys.readouterr().out
    assert "model_type qwen3" in out and "qk_norm: True" in out
    assert f"parameters: {n_params(c):,}" in out
    assert f"tensors: {len(init_params(c))} lmspec parameters, float64" in out


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["model", "inspect", "no-such-preset"]) == 2
    assert "neither a checkpoint directory nor a preset" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert main(["model", "inspect", str(tmp_path)]) == 2
    assert "model_type: unsupported 'gpt2'" in capsys.readouterr().err
    assert main(["model", "inspect", "tiny-llama", "--check-tensors"]) == 2
    assert "needs a checkpoint directory" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-moe", "tiny-deepseek", "tiny-hybrid"])
def test_every_preset_inspects(name, capsys):
    assert main(["model", "inspect", name]) == 0
    assert "active parameters per token" in capsys.readouterr().out
