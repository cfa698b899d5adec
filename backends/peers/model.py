"""Whole decoder models (spec/model.py) through HF transformers' own classes: Llama, Mistral,
Qwen2, Qwen3, Mixtral, Qwen3-MoE and DeepSeek-V3 ``*ForCausalLM``, called with the spec's
parameters through ``torch.func.functional_call`` (so autograd reaches them); config and tensor
names from ``spec/_checkpoint.py``."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import torch
from huggingface_hub.errors import StrictDataclassError
from torch.func import functional_call
from transformers import CONFIG_MAPPING, AutoModelForCausalLM, DynamicCache
from transformers.loss.loss_utils import ForCausalLMLoss

from lmspec.spec import _checkpoint as ck
from lmspec.spec.model import (
    IGNORE_INDEX,
    ModelConfig,
    cached_length,
    check_args,
    check_tokens,
    default_positions,
    trainable,
)

__all__ = ["model", "model_grad", "model_loss"]

# explicit, so that every device runs the same code: HF's default attention on CPU and GPU,
# and the per-expert loop (the default, grouped_mm, depends on the device and torch build)
_ATTN, _EXPERTS = "sdpa", "eager"
_DEEPSEEK_LATENT_EPS = 1e-6  # DeepseekV3RMSNorm's default, what q_a/kv_a_layernorm use


# ----------------------------------------------------------------------------- the HF model


def _hf_config(config: ModelConfig):
    """(model_type, HF config) of the HF class that computes ``config``'s forward, or
    NotImplementedError naming what no supported class expresses."""
    if "linear" in config.layer_kinds():
        raise NotImplementedError("model: lightning-attention (MiniMax-01 hybrid) layers: "
                                  "transformers' MiniMax classes are not among the adapted ones")
    c = _canonical(config)
    mt = ck.infer_model_type(c)
    if c.mla is not None and c.norm_eps != _DEEPSEEK_LATENT_EPS:
        # DeepseekV3Attention builds its latent norms with eps 1e-6 whatever rms_norm_eps is
        # (spec/_checkpoint refuses such a checkpoint for the same reason)
        raise NotImplementedError(f"model: norm_eps={c.norm_eps} with MLA (transformers' "
                                  "DeepSeek-V3 latent norms always use eps 1e-6)")
    errors = []
    # adapter: Llama's function also runs on Mistral's class (no window: the same model), for
    # the sliding window and for what LlamaConfig refuses (hidden size no multiple of heads)
    for cand in (mt, "mistral") if mt == "llama" else (mt,):
        try:
            hf = ck.config_to_hf(c, cand)
            hf = {k: v for k, v in hf.items() if k not in ("model_type", "architectures")}
            return cand, CONFIG_MAPPING[cand](**hf)
        except (ValueError, StrictDataclassError) as e:
            errors.append(f"{cand}: {e}")
    raise NotImplementedError(f"model: no transformers class computes this config: "
                              f"{'; '.join(errors)}")


def _canonical(config: ModelConfig) -> ModelConfig:
    """The same forward function with the fields the spec makes inert dropped, as config_to_hf
    reads it: no MTP modules (model runs none), an all-softmax hybrid is the dense stack,
    mscale_all_dim without rope scaling is m = 1, sliding_layers listing every layer is all."""
    c = config.replace(mtp_depth=0, hybrid=None)
    if c.mla is not None and c.rope_scaling is None and c.mla.mscale_all_dim:
        c = c.replace(mla=replace(c.mla, mscale_all_dim=0.0))
    if c.sliding_layers is not None and set(c.sliding_layers) == set(range(c.n_layers)):
        c = c.replace(sliding_layers=None)
    return c


@lru_cache(maxsize=32)
def _hf_model(config: ModelConfig, dtype: torch.dtype, device: torch.device):
    """The HF model of ``config`` (its own weights are never used) and its model_type; built
    once per (config, dtype, device)."""
    mt, hf_config = _hf_config(config)
    with torch.device(device):
        m = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation=_ATTN,
                                             experts_implementation=_EXPERTS)
    m.eval()  # no dropout (attention_dropout is 0 anyway), no router jitter
    want = set(_names(config, mt)) | {n for n, _ in _expert_names(config)}
    have = {n for n, _ in m.named_parameters()} | {n for n, _ in m.named_buffers()
                                                   if not n.endswith("inv_freq")}
    if want != have:  # a gap would leave HF's random weights in the forward
        raise AssertionError(f"model: HF names differ: missing {sorted(have - want)[:4]}, "
                             f"unknown {sorted(want - have)[:4]}")
    return m, mt


def _names(config: ModelConfig, mt: str) -> dict[str, tuple[str, bool]]:
    """HF in-memory name -> (spec name, transposed) of every non-expert tensor
    (spec/_checkpoint's on-disk map; Mixtral's ``block_sparse_moe.`` is ``mlp.`` in memory)."""
    return {hf.replace(".block_sparse_moe.", ".mlp."): (name, tr)
            for name, (hf, tr) in ck._plain_map(config, mt).items()}


def _expert_names(config: ModelConfig) -> list[tuple[str, int]]:
    pre = "model.layers.{}.mlp.experts."
    return [(pre.format(i) + w, i) for i in range(config.n_layers) if config.is_moe_layer(i)
            for w in ("gate_up_proj", "down_proj")]


def _state(P, config: ModelConfig, mt: str) -> dict[str, torch.Tensor]:
    """The HF state dict of the spec's parameters, built in torch so gradients flow back:
    nn.Linear weights are (out, in); fused experts are gate_up_proj (E, 2F, D) = [gate; up]
    and down_proj (E, D, F)."""
    out = {hf: P[name].T if tr else P[name] for hf, (name, tr) in _names(config, mt).items()}
    for hf, i in _expert_names(config):
        pre = f"layers.{i}.moe."
        if hf.endswith("gate_up_proj"):
            out[hf] = torch.cat((P[pre + "w_gate"], P[pre + "w_up"]), dim=2).transpose(1, 2)
        else:
            out[hf] = P[pre + "w_down"].transpose(1, 2)  # (E, D, F)
    return out


# ----------------------------------------------------------------------------- inputs


def _as_int(a, device) -> torch.Tensor | None:
    return None if a is None else torch.as_tensor(a, device=device).long()


def _positions(positions, segment_ids, tc: int, b: int, t: int, device) -> torch.Tensor:
    if positions is None:
        seg = None if segment_ids is None else torch.as_tensor(segment_ids).cpu().numpy()
        return torch.from_numpy(default_positions(b, t, seg, tc)).to(device)
    pos = _as_int(positions, device)
    if pos.numel() and int(pos.min()) < 0:
        raise ValueError(f"positions: expected values >= 0, got {int(pos.min())}")
    return pos


def _check_packing(seg: torch.Tensor, pos: torch.Tensor) -> None:
    """HF has no segment ids: with no attention mask it reads packed documents off the
    position ids (``find_packed_sequence_indices``: a new document wherever a position is not
    the previous one + 1). That is the spec's mask only when those breaks are exactly the
    segment changes and no segment id comes back after another (the spec joins equal ids)."""
    pos_break = pos[:, 1:] != pos[:, :-1] + 1
    seg_break = seg[:, 1:] != seg[:, :-1]
    runs = 1 + seg_break.sum(1)  # (B,)
    rejoin = any(len(torch.unique(row)) != int(n) for row, n in zip(seg, runs, strict=True))
    if bool((pos_break != seg_break).any()) or rejoin:
        raise NotImplementedError("model: segment_ids whose documents are not the runs of "
                                  "positions restarting (transformers reads packing off "
                                  "position_ids only)")


def _hf_cache(caches, config: ModelConfig, dtype: torch.dtype) -> DynamicCache:
    """A config-less DynamicCache (full layers: with the config, sliding layers would keep only
    the last window) holding the spec's caches: k, v (B, T, Hkv, hd) -> (B, Hkv, T, hd);
    MLA's c_kv (B, T, dc) and k_rope (B, T, dr) -> single-head (B, 1, T, .), the latents
    DeepseekV3Attention caches (rope key de-interleaved, as the spec's)."""
    if caches is None:
        return DynamicCache()
    if config.mla is not None:  # (B, T, dc), (B, T, dr) -> (B, 1, T, .)
        pairs = [(c["c_kv"][:, None], c["k_rope"][:, None]) for c in caches]
    else:  # (B, T, Hkv, hd) -> (B, Hkv, T, hd)
        pairs = [(c["k"].transpose(1, 2), c["v"].transpose(1, 2)) for c in caches]
    return DynamicCache(ddp_cache_data=[(k.to(dtype), v.to(dtype)) for k, v in pairs])


def _spec_caches(cache: DynamicCache, config: ModelConfig) -> list[dict]:
    out = []
    for layer in cache.layers:
        k, v = layer.keys.detach(), layer.values.detach()
        if config.mla is not None:
            out.append({"c_kv": k[:, 0], "k_rope": v[:, 0]})
        else:
            out.append({"k": k.transpose(1, 2), "v": v.transpose(1, 2)})
    return out


# ----------------------------------------------------------------------------- forward


def _forward(P, tokens, positions, segment_ids, caches, config: ModelConfig, use_cache: bool):
    """logits (B, T, V), the HF cache (or None), and each MoE layer's router output
    (logits, weights, ids) as HF's router module returned it."""
    device = P["embed"].device
    m, mt = _hf_model(config, P["embed"].dtype, device)
    tokens = torch.as_tensor(tokens, device=device)
    check_tokens(tokens.cpu().numpy(), config.vocab_size)
    tokens = tokens.long()
    b, t = tokens.shape
    tc = cached_length(caches)
    pos = _positions(positions, segment_ids, tc, b, t, device)
    kw = {}
    if segment_ids is not None:
        # adapter: packed documents through HF's own packing (position resets, no mask)
        _check_packing(_as_int(segment_ids, device), pos)
    else:
        # adapter: an all-ones mask, so HF never reads packing off arbitrary positions
        kw["attention_mask"] = torch.ones(b, tc + t, dtype=torch.long, device=device)
    cache = _hf_cache(caches, config, P["embed"].dtype) if use_cache or caches is not None else None
    routers = []
    hooks = [m.model.layers[i].mlp.gate.register_forward_hook(
        lambda _mod, _inp, out: routers.append(out))
        for i in range(config.n_layers) if config.is_moe_layer(i)]
    try:
        out = functional_call(m, _state(P, config, mt), (tokens,),
                              dict(kw, position_ids=pos, cache=cache,
                                   use_cache=cache is not None))
    finally:
        for h in hooks:
            h.remove()
    return out.logits, cache, routers


def model(params, tokens, positions=None, segment_ids=None, caches=None, *,
          config: ModelConfig, use_cache: bool = False):
    check_args(params, tokens, positions, segment_ids, caches, config=config)
    logits, cache, _ = _forward(params, tokens, positions, segment_ids, caches, config,
                                use_cache)
    return logits, (None if cache is None else _spec_caches(cache, config))


# ----------------------------------------------------------------------------- loss


def _check_targets(tokens, targets) -> None:
    if tuple(targets.shape) != tuple(tokens.shape):
        raise ValueError(f"targets: expected shape {tuple(tokens.shape)}, got "
                         f"{tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError("targets: expected an integer array")


def _balance_terms(logits, ids, config: ModelConfig, n_seq: int) -> torch.Tensor:
    """One MoE layer's balance terms of spec/moe_balance_loss.py from HF's router logits
    (N, E) and selection (N, k). HF's own ``load_balancing_loss_func`` pools every layer's
    tokens into one loss and divides the counts by N, not N k: not the spec's."""
    m = config.moe
    logits = logits.float()
    n, e = logits.shape
    total = logits.new_zeros(())
    if n == 0:
        return total
    k = ids.shape[1]
    s = torch.softmax(logits, -1) if m.score_func == "softmax" else torch.sigmoid(logits)
    # (n_seq, E) assignments per sequence (the N rows are n_seq runs of T tokens)
    count = torch.nn.functional.one_hot(ids.reshape(n_seq, -1), e).sum(1).float()
    if m.balance_coef and m.balance_loss == "switch":
        f = count.sum(0) / (n * k)
        total = total + m.balance_coef * e * (f * s.mean(0)).sum()
    elif m.balance_coef:  # "seq": DeepSeek-V3's sequence-wise loss, per sequence of T tokens
        t = n // n_seq
        f = e / (k * t) * count  # (n_seq, E)
        sn = s / (s.sum(-1, keepdim=True) + 1e-20)
        p = sn.reshape(n_seq, t, e).mean(1)
        total = total + m.balance_coef * (f * p).sum(-1).mean()
    if m.router_z_coef:
        total = total + m.router_z_coef * (torch.logsumexp(logits, -1) ** 2).mean()
    return total


def _loss(P, tokens, targets, positions, segment_ids, config: ModelConfig, n_tokens):
    if config.mtp_depth:
        raise NotImplementedError("model_loss: mtp_depth > 0 (transformers runs no "
                                  "multi-token-prediction modules)")
    device = P["embed"].device
    tokens = torch.as_tensor(tokens, device=device)
    targets = torch.as_tensor(targets, device=device)
    _check_targets(tokens, targets)
    targets = targets.long()
    n_valid = int((targets != IGNORE_INDEX).sum())
    if n_tokens is not None and n_tokens < n_valid:
        raise ValueError(f"n_tokens: expected >= the {n_valid} valid targets, got {n_tokens}")
    n = max(n_valid if n_tokens is None else int(n_tokens), 1)
    logits, _, routers = _forward(P, tokens, positions, segment_ids, None, config, False)
    v = logits.shape[-1]
    # HF's causal-LM loss: float32 upcast, sum / num_items_in_batch; adapter: targets as
    # shift_labels (already the next tokens), num_items_in_batch = max(n, 1) (0 gives NaN)
    ce = ForCausalLMLoss(logits, None, v, num_items_in_batch=n, shift_labels=targets)
    if config.z_loss:  # adapter: HF has no z-loss; PaLM's z * lse**2 over the valid targets
        lse = torch.logsumexp(logits.float().reshape(-1, v), -1)
        valid = targets.reshape(-1) != IGNORE_INDEX
        ce = ce + config.z_loss * torch.where(valid, lse * lse, 0.0).sum() / n
    balance = ce.new_zeros(())
    for lr, _, ids in routers:  # adapter: the spec's balance terms from HF's router outputs
        balance = balance + _balance_terms(lr, ids, config, tokens.shape[0])
    e = 0 if config.moe is None else config.moe.n_experts
    loads = torch.stack([torch.bincount(ids.reshape(-1), minlength=e) for _, _, ids in routers]
                        ) if routers else torch.zeros((0, e), dtype=torch.int64, device=device)
    loss = ce + balance
    metrics = {"ce": float(ce.detach()), "balance": float(balance.detach()), "mtp": 0.0,
               "n_tokens": n_valid, "loads": loads}
    return loss, metrics


def model_loss(params, tokens, targets, positions=None, segment_ids=None, *,
               config: ModelConfig, n_tokens: int | None = None, weights=None):
    check_args(params, tokens, positions, segment_ids, None, config=config, weights=weights)
    if weights is not None:  # HF's ForCausalLMLoss has no per-token weights to compare with
        raise NotImplementedError("peers: weights (per-target loss weights) in model_loss")
    return _loss(params, tokens, targets, positions, segment_ids, config, n_tokens)


def model_grad(params, tokens, targets, positions=None, segment_ids=None, *,
               config: ModelConfig, n_tokens: int | None = None, weights=None):
    check_args(params, tokens, positions, segment_ids, None, config=config, weights=weights)
    if weights is not None:  # HF's ForCausalLMLoss has no per-token weights to compare with
        raise NotImplementedError("peers: weights (per-target loss weights) in model_grad")
    names = trainable(config)
    wrt = set(names)
    leaves = {n: p.detach().requires_grad_(n in wrt) for n, p in params.items()}
    with torch.enable_grad():
        loss, metrics = _loss(leaves, tokens, targets, positions, segment_ids, config, n_tokens)
        grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    out = {n: torch.zeros_like(leaves[n]) if g is None else g.to(leaves[n].dtype)
           for n, g in zip(names, grads, strict=True)}
    return loss.detach(), metrics, out
