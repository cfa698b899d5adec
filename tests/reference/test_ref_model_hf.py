"""The reference decoder against Hugging Face transformers on tiny random checkpoints of every
supported model_type, through ``lmspec.spec._checkpoint`` (config and name maps, safetensors
directories): logits agree in float64 to 1e-10 relative; HF -> lmspec -> HF is tensor-identical.

transformers runs some steps in float32 even in a float64 model (RMSNorm, the attention softmax,
the RoPE frequencies and angles, the routers): ``_hf_float64`` makes those float64 for the test
(every ``torch.float32``/``torch.float`` its modeling modules name becomes float64, and
Mixtral's router, which calls ``.float()``, runs in the input dtype)."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lmspec.reference.model import model as ref_model  # noqa: E402
from lmspec.spec import _checkpoint as ck  # noqa: E402

RTOL = 1e-10

BASE = dict(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
            max_position_embeddings=256)
CASES = {
    "llama": dict(BASE, tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "mistral": dict(BASE, num_key_value_heads=1, sliding_window=3, rope_parameters={
        "rope_type": "linear", "rope_theta": 1000.0, "factor": 2.0}),
    "qwen2": dict(BASE, use_sliding_window=True, sliding_window=2, max_window_layers=1,
                  rope_parameters={"rope_type": "default", "rope_theta": 100.0}),
    "qwen3": dict(BASE, head_dim=6, rope_parameters={
        "rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0,
        "original_max_position_embeddings": 16, "beta_fast": 8.0, "beta_slow": 1.0}),
    "mixtral": dict(BASE, intermediate_size=6, num_local_experts=4, num_experts_per_tok=2,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e4}),
    "qwen3_moe": dict(BASE, head_dim=4, moe_intermediate_size=5, num_experts=4,
                      num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[0]),
    "deepseek_v3": dict(
        BASE, rms_norm_eps=1e-6, num_hidden_layers=3, num_key_value_heads=4,
        moe_intermediate_size=5,
        n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
        first_k_dense_replace=1, kv_lora_rank=6, q_lora_rank=5, qk_nope_head_dim=3,
        qk_rope_head_dim=4, v_head_dim=3, n_shared_experts=2, routed_scaling_factor=2.5,
        rope_interleave=True, rope_parameters={
            "rope_type": "yarn", "rope_theta": 1e4, "factor": 8.0,
            "original_max_position_embeddings": 32, "beta_fast": 32.0, "beta_slow": 1.0,
            "mscale": 1.0, "mscale_all_dim": 1.0}),
}
# DeepSeek-V3 without q_lora_rank (q_proj), half-split RoPE, no group stage, unscaled weights
CASES["deepseek_v3-plain"] = dict(
    CASES["deepseek_v3"], q_lora_rank=None, rope_interleave=False, n_group=1, topk_group=1,
    routed_scaling_factor=1.0, norm_topk_prob=False, n_shared_experts=1,
    rope_parameters={"rope_type": "default", "rope_theta": 100.0})
SHARDED = {"qwen3"}   # saved with a small max_shard_size
BF16 = {"mistral"}    # saved in bfloat16 (read through ml_dtypes)

MODULES = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe", "deepseek_v3")


@pytest.fixture
def hf_float64(monkeypatch):
    patch_float64(monkeypatch)


def patch_float64(monkeypatch) -> None:
    import importlib

    from transformers import modeling_rope_utils
    from transformers.models.mixtral import modeling_mixtral

    proxy = types.ModuleType("torch64")
    proxy.__getattr__ = lambda name: (torch.float64 if name in ("float32", "float")
                                      else getattr(torch, name))
    for mt in MODULES:
        mod = importlib.import_module(f"transformers.models.{mt}.modeling_{mt}")
        monkeypatch.setattr(mod, "torch", proxy)
    monkeypatch.setattr(modeling_rope_utils, "torch", proxy)

    def mixtral_router(self, hidden_states):
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        logits = torch.nn.functional.linear(hidden_states, self.weight)
        probs = torch.softmax(logits, dim=-1)
        top, idx = torch.topk(probs, self.top_k, dim=-1)
        return logits, top / top.sum(dim=-1, keepdim=True), idx

    monkeypatch.setattr(modeling_mixtral.MixtralTopKRouter, "forward", mixtral_router)


def _build(case: str, path, seed: int = 0):
    """A random tiny HF model of ``case`` saved (safetensors) at ``path``; returns it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    mt = case.split("-")[0]
    cfg = AutoConfig.for_model(mt, **CASES[case])
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(cfg).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every tensor matters: norms around 1, biases and the bias non-zero
        for name, p in list(m.named_parameters()) + list(m.named_buffers()):
            if not p.is_floating_point() or "inv_freq" in name:
                continue
            r = torch.randn(p.shape, generator=g, dtype=torch.float64)
            p.copy_(1.0 + 0.3 * r if name.endswith("norm.weight") else
                    0.3 * r if "e_score_correction_bias" in name else 0.5 * r)
    if mt in BF16:
        m = m.to(torch.bfloat16)
    m.save_pretrained(path, max_shard_size="3KB" if mt in SHARDED else "50GB")
    return m


def _load_hf(path):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64,
                                             attn_implementation="eager",
                                             experts_implementation="eager")
    return m.double().eval()


def _hf_logits(m, tokens):
    with torch.no_grad():
        return m(torch.from_numpy(tokens)).logits.numpy()


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


TOKENS = np.random.default_rng(0).integers(0, 32, (2, 9)).astype(np.int64)


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers_float64(case, tmp_path, hf_float64):
    src, mt = tmp_path / "hf", case.split("-")[0]
    _build(case, src)
    if mt in SHARDED:
        assert (src / "model.safetensors.index.json").exists()
        assert len({*json.loads((src / "model.safetensors.index.json").read_text())
                    ["weight_map"].values()}) > 1
    config, params = ck.load_hf_dir(src, dtype=np.float64)
    want = _hf_logits(_load_hf(src), TOKENS)
    got, _ = ref_model(params, TOKENS, config=config)
    assert got.shape == want.shape == (2, 9, 32)
    print(f"{case}: max relative error {_rel(got, want):.3g}")
    assert _rel(got, want) <= RTOL, f"{case}: relative error {_rel(got, want):.3g}"

    # lmspec -> HF directory -> transformers: the same function
    out = tmp_path / "out"
    ck.save_hf_dir(out, config, params, mt)
    again = _hf_logits(_load_hf(out), TOKENS)
    assert _rel(again, want) <= RTOL


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_is_tensor_identical(case, tmp_path):
    src, mt = tmp_path / "hf", case.split("-")[0]
    _build(case, src, seed=1)
    hf_cfg = json.loads((src / "config.json").read_text())
    config, params = ck.load_hf_dir(src)  # stored dtype
    disk = ck.read_hf_tensors(src)
    back = ck.lmspec_to_hf(config, params, mt)
    assert sorted(back) == sorted(disk)
    for k, v in disk.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert back[k].tobytes() == v.tobytes(), k
    # the config: HF -> lmspec -> HF -> lmspec is a fixed point
    assert ck.config_from_hf(ck.config_to_hf(config, mt)) == config
    assert ck.config_from_hf(hf_cfg) == config
    # lmspec writes what it reads
    ck.save_hf_dir(tmp_path / "out", config, params, mt, max_shard_bytes=2048)
    c2, p2 = ck.load_hf_dir(tmp_path / "out")
    assert c2 == config and all(p2[k].tobytes() == params[k].tobytes() for k in params)


def test_in_memory_state_dict_layout_is_read(tmp_path):
    """transformers' in-memory names (fused experts, Mixtral's mlp.) map like the disk's."""
    for mt in ("mixtral", "deepseek_v3"):
        m = _build(mt, tmp_path / mt)
        config, params = ck.load_hf_dir(tmp_path / mt)
        sd = {k: v.numpy() for k, v in m.state_dict().items()}
        mem = ck.hf_to_lmspec(config, sd, mt)
        assert all(np.array_equal(mem[k], params[k]) for k in params)


def test_config_fields_as_read():
    c = ck.config_from_hf({"model_type": "deepseek_v3", **CASES["deepseek_v3"]})
    assert c.mla.q_lora_rank == 5 and c.mla.mscale_all_dim == 1.0 and c.rope_interleaved
    assert c.rope_scaling.kind == "yarn" and c.rope_scaling.attention_factor == 1.0
    m = c.moe
    assert (m.n_experts, m.top_k, m.d_expert, m.d_shared) == (8, 3, 5, 10)
    assert (m.n_group, m.topk_group, m.routed_scaling_factor) == (4, 2, 2.5)
    assert m.score_func == "sigmoid" and m.selection_bias and m.masked_group_fill == "-inf"
    assert m.first_k_dense == 1 and m.norm_topk_prob
    q2 = ck.config_from_hf({"model_type": "qwen2", **CASES["qwen2"]})
    assert q2.attention_bias and q2.sliding_window == 2 and q2.sliding_layers == (1,)
    ms = ck.config_from_hf({"model_type": "mistral", **CASES["mistral"]})
    assert ms.sliding_window == 3 and ms.sliding_layers is None
    assert ms.rope_scaling.kind == "linear" and ms.rope_theta == 1000.0
    # old-style rope_theta + rope_scaling
    old = ck.config_from_hf({"model_type": "llama", **BASE, "rope_theta": 5e5, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}})
    assert old.rope_theta == 5e5 and old.rope_scaling.original_max_position == 8192
    qm = ck.config_from_hf({"model_type": "qwen3_moe", **CASES["qwen3_moe"]})
    assert qm.qk_norm and qm.moe.first_k_dense == 1 and qm.moe.norm_topk_prob


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="model_type: unsupported 'gpt2'"):
        ck.config_from_hf({"model_type": "gpt2", **BASE})
    with pytest.raises(ValueError, match="rope_type 'dynamic'"):
        ck.config_from_hf({"model_type": "llama", **BASE,
                           "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}})
    with pytest.raises(ValueError, match="hidden_act"):
        ck.config_from_hf({"model_type": "llama", **BASE, "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="attention_bias"):
        ck.config_from_hf({"model_type": "llama", **BASE, "attention_bias": True})
    with pytest.raises(ValueError, match="rms_norm_eps"):  # HF's latent norms: always 1e-6
        ck.config_from_hf({"model_type": "deepseek_v3", **CASES["deepseek_v3"],
                           "rms_norm_eps": 1e-5})
    with pytest.raises(ValueError, match="decoder_sparse_step"):
        ck.config_from_hf({"model_type": "qwen3_moe", **CASES["qwen3_moe"],
                           "decoder_sparse_step": 2})
    config = ck.config_from_hf({"model_type": "mixtral", **CASES["mixtral"]})
    from lmspec.spec.model import init_params

    hf = ck.lmspec_to_hf(config, init_params(config), "mixtral")
    gone = "model.layers.1.block_sparse_moe.experts.2.w3.weight"
    with pytest.raises(ValueError, match=r"missing \['" + gone.replace(".", r"\.")):
        ck.hf_to_lmspec(config, {k: v for k, v in hf.items() if k != gone}, "mixtral")
    with pytest.raises(ValueError, match=r"unexpected \['model\.layers\.0\.extra\.weight'\]"):
        ck.hf_to_lmspec(config, {**hf, "model.layers.0.extra.weight": np.zeros(1)}, "mixtral")
    bad = dict(hf, **{"model.norm.weight": np.zeros(3)})
    with pytest.raises(ValueError, match=r"model\.norm\.weight: expected shape \(16,\)"):
        ck.hf_to_lmspec(config, bad, "mixtral")
    with pytest.raises(ValueError, match="model_type: unsupported 'gpt2'"):
        ck.lmspec_to_hf(config, init_params(config), "gpt2")
    with pytest.raises(ValueError, match="qk_norm"):
        ck.config_to_hf(config.replace(moe=None), "qwen3")
    with pytest.raises(ValueError, match="mtp_depth=1 .transformers has no MTP"):
        ck.config_to_hf(config.replace(mtp_depth=1), "mixtral")
    # a checkpoint directory with a tensor missing: named, never a partial load
    ck.save_hf_dir(tmp_path / "d", config, init_params(config), "mixtral")
    t = ck.read_hf_tensors(tmp_path / "d")
    del t["lm_head.weight"]
    ck.write_safetensors(tmp_path / "d" / "model.safetensors", t)
    with pytest.raises(ValueError, match=r"missing \['lm_head\.weight'\]"):
        ck.load_hf_dir(tmp_path / "d")
    with pytest.raises(FileExistsError):
        ck.save_hf_dir(tmp_path / "d", config, init_params(config), "mixtral")


@pytest.mark.parametrize("backend_name", ["torch_triton", "jax_xla"])
def test_backends_in_float32_on_loaded_checkpoints(backend_name, tmp_path):
    """Each backend runs the checkpoints lmspec loads in float32, within the tolerance
    policy of the float64 reference (which equals transformers' float64 logits), and hence
    within that bound plus transformers' own float32 error of transformers' float32 logits."""
    from lmspec import backends
    from lmspec.conformance._model_naive import naive
    from lmspec.spec._tolerance import FLOOR_ULPS, K, floor_for

    try:
        b = backends.load(backend_name)
    except backends.BackendUnavailable as e:
        pytest.skip(str(e))
    for case in CASES:
        src = tmp_path / case
        _build(case, src, seed=2)
        config, params = ck.load_hf_dir(src, dtype=np.float64)
        p32 = {n: a.astype(np.float32).astype(np.float64) for n, a in params.items()}
        ref = ref_model(p32, TOKENS, config=config)[0]
        nv = np.asarray(naive("model", p32, {"tokens": TOKENS}, config, np.float32,
                              (ref, None))[0], np.float64)
        got = np.asarray(b.to_numpy(b.fn("model")(
            {n: b.asarray(a, "float32") for n, a in p32.items()}, b.asarray(TOKENS, None),
            config=config)[0]), np.float64)
        scale = float(np.abs(ref).max())
        bound = K["output"] * float(np.abs(nv - ref).max()) + floor_for(np.float32, FLOOR_ULPS,
                                                                        scale)
        err = float(np.abs(got - ref).max())
        assert err <= bound, f"{case}: {backend_name} error {err:.3g} > bound {bound:.3g}"
        hf = _load_hf(src).float()
        with torch.no_grad():
            hf32 = hf(torch.from_numpy(TOKENS)).logits.double().numpy()
        hf_err = float(np.abs(hf32 - ref).max())
        print(f"{case}: {backend_name} {err:.3g} (bound {bound:.3g}), transformers float32 "
              f"{hf_err:.3g}, apart {np.abs(got - hf32).max():.3g}")
        assert float(np.abs(got - hf32).max()) <= bound + hf_err
