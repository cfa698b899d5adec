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


def test_logits_of_a_preset_agree_with_the_reference(capsys):
    assert main(["model", "logits", "tiny-moe", "--tokens", "3, 1 4 1 5", "--top", "3",
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "torch_triton" and info["n_tokens"] == 5 and len(info["top"]) == 3
    # the top tokens are the reference's own, in order, with their softmax probabilities
    import numpy as np

    from lmspec.reference import model

    c = preset("tiny-moe")
    ref = model(init_params(c, 0), np.array([[3, 1, 4, 1, 5]]), config=c)[0][0, -1]
    assert [t["id"] for t in info["top"]] == list(np.argsort(-ref, kind="stable")[:3])
    p = np.exp(ref - ref.max()) / np.exp(ref - ref.max()).sum()
    assert abs(info["top"][0]["p"] - p[info["top"][0]["id"]]) < 1e-5
    r = info["reference"]
    assert r["top1_agree"] == r["positions"] == 5 and 0 < r["relative"] < 1e-5


def test_logits_of_a_checkpoint_read_its_tokenizer(tmp_path, capsys):
    from lmspec.reference._bpe_formats import save_hf_json
    from lmspec.spec.tokenizer import PRESETS

    c = ck.config_from_hf({"model_type": "llama", "vocab_size": 256, "hidden_size": 8,
                           "intermediate_size": 12, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "num_key_value_heads": 1})
    ck.save_hf_dir(tmp_path / "ckpt", c, init_params(c), "llama")
    save_hf_json({bytes([i]): i for i in range(256)}, tmp_path / "ckpt" / "tokenizer.json",
                 pattern=PRESETS["gpt2"].pattern)
    assert main(["model", "logits", str(tmp_path / "ckpt"), "--backend", "jax_xla",
                 "--text", "hi there", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_tokens"] == len("hi there") and info["reference"]["top1_agree"] == 8
    assert all(isinstance(t["text"], str) for t in info["top"])


def test_logits_errors_are_one_line(capsys):
    assert main(["model", "logits", "tiny-llama", "--text", "hi"]) == 2
    assert "--text needs a tokenizer" in capsys.readouterr().err
    assert main(["model", "logits", "tiny-llama", "--tokens", "1 x"]) == 2
    assert "--tokens: expected integers" in capsys.readouterr().err
    assert main(["model", "logits", "tiny-llama", "--tokens", "512"]) == 2
    assert "outside the model's vocabulary (vocab_size 512)" in capsys.readouterr().err
    assert main(["model", "logits", "tiny-llama", "--tokens", "1", "--backend", "bpe_fast"]) == 2
    assert "does not implement model" in capsys.readouterr().err
    assert main(["model", "logits", "tiny-llama", "--tokens", "1", "--top", "0"]) == 2
    assert "--top: expected >= 1" in capsys.readouterr().err
