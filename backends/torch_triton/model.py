"""Whole decoder models (spec/model.py) composed of this backend's components; gradients by
torch autograd. Dense GQA (Llama / Mistral / Qwen), MoE (Mixtral / Qwen3-MoE), DeepSeek-V3
(MLA + MoE) and MiniMax-01 (lightning / softmax hybrid) share one layer loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmspec.backends.torch_triton.cross_entropy import cross_entropy
from lmspec.backends.torch_triton.embedding import embedding
from lmspec.backends.torch_triton.lightning_attention import lightning_attention
from lmspec.backends.torch_triton.mla import mla
from lmspec.backends.torch_triton.moe_balance_loss import moe_balance_loss
from lmspec.backends.torch_triton.moe_layer import moe_layer
from lmspec.backends.torch_triton.moe_router import moe_router
from lmspec.backends.torch_triton.rms_norm import rms_norm
from lmspec.backends.torch_triton.rope import rope
from lmspec.backends.torch_triton.sdpa import sdpa
from lmspec.backends.torch_triton.swiglu import swiglu
from lmspec.spec.cross_entropy import check_targets
from lmspec.spec.model import (
    IGNORE_INDEX,
    ModelConfig,
    cached_length,
    check_args,
    check_tokens,
    default_positions,
    lightning_log_decay,
    trainable,
)

__all__ = ["model", "model_grad", "model_loss", "model_packed"]


def _linear(x, w, b=None):
    """x (..., in) @ w (in, out) (+ b (out,))."""
    y = x @ w
    return y if b is None else y + b


def _host(t: torch.Tensor):
    return t.detach().cpu().numpy()


# ----------------------------------------------------------------------------- mixers


def _gqa(P, pre, h, pos, seg, cache, cfg: ModelConfig, i: int):
    """h (B, T, D) -> (B, T, D), cache {"k", "v"} (B, Tc + T, Hkv, hd) of rotated keys."""
    b, t, _ = h.shape
    H, hkv, hd = cfg.n_heads, cfg.kv_heads, cfg.hd
    # one matmul for q, k and v (fewer, larger GEMMs forward and backward: on CPU the
    # step is GEMM-bound); the same sums as three, column blocks of one product
    w = torch.cat([P[pre + n] for n in ("wq", "wk", "wv")], dim=1)
    bqkv = torch.cat([P[pre + n] for n in ("bq", "bk", "bv")]) if cfg.attention_bias else None
    q, k, v = _linear(h, w, bqkv).split((H * hd, hkv * hd, hkv * hd), dim=-1)
    q, k, v = q.reshape(b, t, H, hd), k.reshape(b, t, hkv, hd), v.reshape(b, t, hkv, hd)
    if cfg.qk_norm:  # Qwen3: per-head RMSNorm before RoPE
        q = rms_norm(q, P[pre + "q_norm"], eps=cfg.norm_eps)
        k = rms_norm(k, P[pre + "k_norm"], eps=cfg.norm_eps)
    kw = dict(theta=cfg.rope_theta, rotary_dim=cfg.rotary_dim, interleaved=cfg.rope_interleaved,
              scaling=cfg.rope_scaling)
    # q and k rotated in one call (one cos/sin table for both): heads are independent
    q, k = rope(torch.cat((q, k), dim=2), pos, **kw).split((H, hkv), dim=2)
    if cache is not None and hasattr(cache, "attend"):  # the engine's paged KV: model_packed
        o = cache.attend(q[0], k[0], v[0], cfg.window(i))  # (N, H, hd)
        return o.reshape(b, t, H * hd) @ P[pre + "wo"], cache
    if cache is not None:
        k = torch.cat((cache["k"].to(k.dtype), k), dim=1)  # (B, Tc + T, Hkv, hd)
        v = torch.cat((cache["v"].to(v.dtype), v), dim=1)
    o, _ = sdpa(q, k, v, seg, seg, causal=True, window=cfg.window(i))  # (B, T, H, hd)
    return o.reshape(b, t, H * hd) @ P[pre + "wo"], {"k": k, "v": v}


_MLA_NAMES = {"w_uq": "w_uq", "w_dkv": "w_dkv", "kv_norm_weight": "kv_norm", "w_ukv": "w_ukv",
              "w_o": "wo", "w_dq": "w_dq", "q_norm_weight": "q_norm"}


def _mla(P, pre, h, pos, seg, cache, cfg: ModelConfig, i: int):
    """h (B, T, D) -> (B, T, D), cache {"c_kv" (B, Tk, dc), "k_rope" (B, Tk, dr)}.
    mla has no segment ids: like the reference, packed documents are not separated here."""
    m = cfg.mla
    arrays = {a: P.get(pre + n) for a, n in _MLA_NAMES.items()}
    if cache is not None:
        arrays.update(c_kv_cache=cache["c_kv"], k_rope_cache=cache["k_rope"])
    out, c_kv, k_rope = mla(
        h, pos, **arrays, n_heads=cfg.n_heads, qk_nope_head_dim=m.qk_nope_head_dim,
        qk_rope_head_dim=m.qk_rope_head_dim, v_head_dim=m.v_head_dim,
        kv_lora_rank=m.kv_lora_rank, theta=cfg.rope_theta, scaling=cfg.rope_scaling,
        mscale_all_dim=m.mscale_all_dim, interleaved=cfg.rope_interleaved, eps=cfg.norm_eps,
        causal=True, form=m.form)
    return out, {"c_kv": c_kv, "k_rope": k_rope}


def _lightning(P, pre, h, pos, seg, cache, cfg: ModelConfig, i: int):
    """h (B, T, D) -> (B, T, D), cache {"state"} (B, H, hd, hd) float32 (or wider)."""
    b, t, _ = h.shape
    H, hd = cfg.n_heads, cfg.hd
    q, k, v = (F.silu(h @ P[pre + n]).reshape(b, t, H, hd) for n in ("wq", "wk", "wv"))
    wide = torch.float64 if h.dtype == torch.float64 else torch.float32
    decay = torch.as_tensor(lightning_log_decay(cfg, i), dtype=wide, device=h.device)  # (H,)
    s0 = None if cache is None else cache["state"]
    o, state = lightning_attention(q, k, v, decay, s0, block_size=cfg.hybrid.block_size)
    o = rms_norm(o.reshape(b, t, H * hd), P[pre + "out_norm"], eps=cfg.norm_eps)
    o = o * torch.sigmoid(h @ P[pre + "w_gate"])
    return o @ P[pre + "wo"], {"state": state}


# ----------------------------------------------------------------------------- FFNs


def _dense_ffn(P, pre, h, cfg: ModelConfig, stats: list):
    return swiglu(h, *(P[pre + "ffn." + n] for n in ("w_gate", "w_up", "w_down")))


_MOE_NAMES = ("w_gate", "w_up", "w_down", "shared.w_gate", "shared.w_up", "shared.w_down",
              "shared_gate")


def _moe(P, pre, h, cfg: ModelConfig, stats: list):
    """h (B, T, D) -> (B, T, D); appends the router's (scores, ids, logits) to stats."""
    m, (b, t, d) = cfg.moe, h.shape
    q = pre + "moe."
    h2 = h.reshape(b * t, d)  # (N, D)
    lr = h2 @ P[q + "router"]  # (N, E) router logits
    ids, w, scores = moe_router(
        lr, P.get(q + "router_bias"), top_k=m.top_k, score_func=m.score_func,
        norm_topk_prob=m.norm_topk_prob, n_group=m.n_group, topk_group=m.topk_group,
        routed_scaling_factor=m.routed_scaling_factor, masked_group_fill=m.masked_group_fill)
    y, _ = moe_layer(h2, ids, w, *(P.get(q + n) for n in _MOE_NAMES),
                     capacity_factor=m.capacity_factor)
    stats.append({"scores": scores, "ids": ids, "logits": lr})
    return y.reshape(b, t, d)


# ----------------------------------------------------------------------------- the stack


def _as_int(a, device) -> torch.Tensor | None:
    return None if a is None else torch.as_tensor(a, device=device).long()


def _positions(positions, segment_ids, caches, b: int, t: int, device) -> torch.Tensor:
    """(B, T) int64 on the device: given, or the spec's default."""
    if positions is None:
        seg = None if segment_ids is None else _host(torch.as_tensor(segment_ids))
        return torch.from_numpy(default_positions(b, t, seg, cached_length(caches))).to(device)
    pos = _as_int(positions, device)
    if pos.numel() and int(pos.min()) < 0:
        raise ValueError(f"positions: expected values >= 0, got {int(pos.min())}")
    return pos


def _layer(P, pre, x, pos, seg, cache, config: ModelConfig, i: int, kind: str, stats: list):
    """One pre-norm block (mixer, then FFN) on the residual stream; returns x and the cache."""
    mixer = _lightning if kind == "linear" else _mla if config.mla is not None else _gqa
    h = rms_norm(x, P[pre + "attn_norm"], eps=config.norm_eps)
    out, cache = mixer(P, pre + "attn.", h, pos, seg, cache, config, i)
    x = x + out
    ffn = _moe if config.is_moe_layer(i) else _dense_ffn
    return x + ffn(P, pre, rms_norm(x, P[pre + "ffn_norm"], eps=config.norm_eps), config,
                   stats), cache


def _head(P, config: ModelConfig) -> torch.Tensor:
    return P["embed"].T if config.tie_embeddings else P["lm_head"]  # (D, V)


def _shifted(a: torch.Tensor, k: int, fill: int) -> torch.Tensor:
    """a (B, T) moved k to the left, the last k columns ``fill``."""
    out = torch.full_like(a, fill)
    out[:, :max(a.shape[1] - k, 0)] = a[:, k:]
    return out


def _mtp(P, x, tokens, pos, seg, config: ModelConfig, stats: list) -> list[torch.Tensor]:
    """DeepSeek-V3's MTP modules on the main stack's last hidden state x (before the final
    norm): each module's logits (B, T, V)."""
    eps, out, h = config.norm_eps, [], x
    for j in range(config.mtp_depth):
        pre = f"mtp.{j}."
        e = embedding(_shifted(tokens, j + 1, 0), P["embed"])  # t_{i+j+1}
        cat = torch.cat((rms_norm(e, P[pre + "enorm"], eps=eps),
                         rms_norm(h, P[pre + "hnorm"], eps=eps)), dim=-1)
        h, _ = _layer(P, pre, cat @ P[pre + "eh_proj"], pos, seg, None, config,
                      config.n_layers + j, "softmax", stats)
        out.append(rms_norm(h, P[pre + "final_norm"], eps=eps) @ _head(P, config))
    return out


def _forward(params, tokens, positions, segment_ids, caches, config: ModelConfig,
             mtp: bool = False, head: bool = True):
    """logits (B, T, V) (without ``head``: the final-normed hidden states (B, T, D)), the new
    per-layer caches, the MoE layers' router stats (the MTP modules' last), and (with
    ``mtp``) the MTP modules' logits."""
    P = params
    device = P["embed"].device
    tokens = torch.as_tensor(tokens, device=device)
    check_tokens(_host(tokens), config.vocab_size)
    b, t = tokens.shape
    pos = _positions(positions, segment_ids, caches, b, t, device)
    seg = _as_int(segment_ids, device)
    x = embedding(tokens, P["embed"])  # (B, T, D) residual stream
    new_caches, stats = [], []
    for i, kind in enumerate(config.layer_kinds()):
        x, cache = _layer(P, f"layers.{i}.", x, pos, seg, None if caches is None else caches[i],
                          config, i, kind, stats)
        new_caches.append(cache)
    logits = rms_norm(x, P["final_norm"], eps=config.norm_eps)
    if head:
        logits = logits @ _head(P, config)
    mtp_logits = _mtp(P, x, tokens.long(), pos, seg, config, stats) if mtp else []
    return logits, new_caches, stats, mtp_logits


def model_packed(params, tokens, positions, caches, *, config: ModelConfig, logits_at):
    """The serving engine's batched step (not a spec stem): the new tokens of many sequences
    packed into one row, (N,) ids at (N,) positions, each GQA layer's attention done by
    ``caches[i].attend(q, k, v, window)`` (q (N, H, hd), k and v (N, Hkv, hd): it writes k
    and v into its paged pool and returns every token's attention over its own sequence);
    every other operation runs once over all N tokens. Returns the logits (len(logits_at),
    V) of the rows ``logits_at``. GQA models only (MLA and lightning layers keep per-sequence
    caches: the engine runs those one sequence at a time)."""
    if config.mla is not None or "linear" in config.layer_kinds():
        raise ValueError("model_packed: GQA models only (MLA / lightning layers: use model)")
    P = params
    device = P["embed"].device
    tokens = torch.as_tensor(tokens, device=device).reshape(1, -1)
    pos = torch.as_tensor(positions, device=device).reshape(1, -1).long()
    x = embedding(tokens, P["embed"])  # (1, N, D)
    stats: list = []
    for i, kind in enumerate(config.layer_kinds()):
        x, _ = _layer(P, f"layers.{i}.", x, pos, None, caches[i], config, i, kind, stats)
    h = rms_norm(x[0, torch.as_tensor(logits_at, device=device).long()], P["final_norm"],
                 eps=config.norm_eps)
    return h @ _head(P, config)


def model(params, tokens, positions=None, segment_ids=None, caches=None, *,
          config: ModelConfig, use_cache: bool = False):
    check_args(params, tokens, positions, segment_ids, caches, config=config)
    logits, new_caches, *_ = _forward(params, tokens, positions, segment_ids, caches, config)
    return logits, (new_caches if use_cache or caches is not None else None)


# ----------------------------------------------------------------------------- loss


def _fused_head_ok(w: torch.Tensor) -> bool:
    """The fused head + CE below: the torch path in float32 or float64, where the logits
    would be kept in that dtype anyway (bf16/fp16 logits are rounded to that dtype first,
    a cast the fused path would skip); CUDA keeps its Triton cross_entropy kernel."""
    return not w.is_cuda and w.dtype in (torch.float32, torch.float64)


# rows of one chunk of logits: (rows, V) float32 within ~32 MB
_CE_CHUNK_BYTES = 32 << 20


class _HeadCrossEntropy(torch.autograd.Function):
    """sum over valid rows of lse_i - z_i[t_i] + z_loss lse_i^2, z = h @ w, computed by
    chunks of rows; the gradient (softmax (1 + 2 z_loss lse) - onehot on valid rows) is
    formed in the forward, chunk by chunk, so that no (N, V) logits, log-softmax or
    gradient buffer outlives its chunk and no backward pass re-reads them. Valid only as the
    loss's own term (the backward scales the saved gradients by the incoming scalar)."""

    @staticmethod
    def forward(ctx, h, w, t, z_loss: float, wt=None):
        n, v = h.shape[0], w.shape[1]
        rows = max(1, _CE_CHUNK_BYTES // (4 * v))
        total = h.new_zeros((), dtype=h.dtype)
        dh, dw = torch.empty_like(h), torch.zeros_like(w)
        for i0 in range(0, n, rows):
            hc, tc = h[i0:i0 + rows], t[i0:i0 + rows]
            # per-row scale: 1 on valid rows (unweighted), or the row's weight w_i
            scale = valid_scale(tc, None if wt is None else wt[i0:i0 + rows], h.dtype)
            z = hc @ w  # (c, V)
            lse = torch.logsumexp(z, dim=-1)  # (c,)
            valid = tc != IGNORE_INDEX
            tsafe = torch.where(valid, tc, 0)
            picked = z.gather(1, tsafe[:, None])[:, 0]
            term = lse - picked + z_loss * lse * lse
            kept = torch.where(valid, term, 0.0) if wt is None else term * scale
            total = total + kept.sum()
            g = z.sub_(lse[:, None]).exp_()  # softmax, in the logits' buffer
            if z_loss:
                g.mul_((1.0 + 2.0 * z_loss * lse)[:, None])
            g[torch.arange(len(tc), device=g.device), tsafe] -= 1.0
            g.mul_(scale[:, None])  # ignored rows: no gradient
            dh[i0:i0 + rows] = g @ w.T
            dw.addmm_(hc.T, g)
        ctx.save_for_backward(dh, dw)
        return total

    @staticmethod
    def backward(ctx, g):
        dh, dw = ctx.saved_tensors
        return dh * g, dw * g, None, None, None


def valid_scale(t: torch.Tensor, wt: torch.Tensor | None, dtype) -> torch.Tensor:
    """(c,) 1 (or w_i) on valid rows, 0 on ignored ones (where() keeps a weight out)."""
    valid = t != IGNORE_INDEX
    return valid.to(dtype) if wt is None else torch.where(valid, wt.to(dtype), 0.0)


def _weighted_rows_ce(logits, t, wt, z_loss: float, n: int) -> torch.Tensor:
    """sum_{valid i} w_i CE_i / max(n, 1), wide: the rounding of the unweighted torch path
    (bf16/fp16 logits upcast to float32 first, torch's log-softmax in that dtype, the z-loss
    from its logsumexp), per row instead of summed; the Triton kernel has no weights."""
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    per = F.cross_entropy(logits, t, ignore_index=IGNORE_INDEX, reduction="none")  # (N,)
    if z_loss > 0.0:
        lse = torch.logsumexp(logits, dim=-1)
        per = per + z_loss * lse * lse
    return (per * valid_scale(t, wt, per.dtype)).sum() / max(n, 1)


def _check_targets(tokens, targets) -> None:
    ts, ok = tuple(tokens.shape), tuple(targets.shape) == tuple(tokens.shape)
    if not ok:
        raise ValueError(f"targets: expected shape {ts}, got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError("targets: expected an integer array")


def _balance(stats: list, config: ModelConfig, b: int, like: torch.Tensor) -> torch.Tensor:
    """Sum over MoE layers of the balance and router z terms (0-d, float32 or wider)."""
    m = config.moe
    total = torch.zeros((), dtype=like.dtype, device=like.device)
    for layer in stats:
        if m.balance_coef:
            total = total + moe_balance_loss(layer["scores"], layer["ids"], kind=m.balance_loss,
                                             n_seq=b, alpha=m.balance_coef)
        if m.router_z_coef:
            total = total + moe_balance_loss(layer["logits"], None, kind="z",
                                             alpha=m.router_z_coef)
    return total


def _loads(stats: list, config: ModelConfig, device) -> torch.Tensor:
    """(n_moe_layers, E) int64 assignments per expert."""
    e = 0 if config.moe is None else config.moe.n_experts
    rows = [torch.bincount(s["ids"].reshape(-1), minlength=e) for s in stats]
    return torch.stack(rows) if rows else torch.zeros((0, e), dtype=torch.int64, device=device)


def _loss(params, tokens, targets, positions, segment_ids, config: ModelConfig, n_tokens,
          weights=None):
    device = params["embed"].device
    tokens = torch.as_tensor(tokens, device=device)
    targets = torch.as_tensor(targets, device=device)
    _check_targets(tokens, targets)
    targets = targets.long()
    n_valid = int((targets != IGNORE_INDEX).sum())
    if n_tokens is not None and n_tokens < n_valid:
        raise ValueError(f"n_tokens: expected >= the {n_valid} valid targets, got {n_tokens}")
    n = n_valid if n_tokens is None else int(n_tokens)
    wt = None if weights is None else torch.as_tensor(weights, device=device).reshape(-1)
    w = _head(params, config)
    fused = _fused_head_ok(w)
    out, _, stats, mtp_logits = _forward(params, tokens, positions, segment_ids, None,
                                         config, mtp=True, head=not fused)
    v = config.vocab_size
    if fused:  # the same sum: every valid row's CE (+ z-loss), then / n
        check_targets(_host(targets), v, IGNORE_INDEX)
        ce = _HeadCrossEntropy.apply(out.reshape(-1, out.shape[-1]), w, targets.reshape(-1),
                                     config.z_loss, wt) / max(n, 1)
    elif wt is not None:
        ce = _weighted_rows_ce(out.reshape(-1, v), targets.reshape(-1), wt, config.z_loss, n)
    else:
        ce = cross_entropy(out.reshape(-1, v), targets.reshape(-1), z_loss=config.z_loss)
    wide = torch.float64 if ce.dtype == torch.float64 else torch.float32
    if not fused and wt is None:
        ce = ce.to(wide) * (n_valid / max(n, 1))
    ce = ce.to(wide)  # mean over valid -> sum / n
    balance = _balance(stats, config, tokens.shape[0], ce)
    seg = _as_int(segment_ids, device)
    mtp = torch.zeros((), dtype=wide, device=device)
    for k, lg in enumerate(mtp_logits, 1):  # module k's CE summed over its targets / n
        tg = _mtp_targets(targets, seg, k)
        n_k = int((tg != IGNORE_INDEX).sum())
        mean = cross_entropy(lg.reshape(-1, v), tg.reshape(-1), z_loss=config.z_loss).to(wide)
        mtp = mtp + mean * (config.mtp_loss_weight / config.mtp_depth * n_k / max(n, 1))
    loss = ce + balance + mtp  # 0-d, float32 or wider
    metrics = {"ce": float(ce.detach()), "balance": float(balance.detach()),
               "mtp": float(mtp.detach()), "n_tokens": n_valid,
               "loads": _loads(stats, config, device)}
    return loss, metrics


def _mtp_targets(targets: torch.Tensor, seg: torch.Tensor | None, k: int) -> torch.Tensor:
    """What MTP module k predicts at i: targets[i + k], ignored where there is none or it lies
    in another document."""
    tg = _shifted(targets, k, IGNORE_INDEX)
    if seg is not None:
        tg[_shifted(seg, k, -1) != seg] = IGNORE_INDEX
    return tg


def model_loss(params, tokens, targets, positions=None, segment_ids=None, *,
               config: ModelConfig, n_tokens: int | None = None, weights=None):
    check_args(params, tokens, positions, segment_ids, None, config=config, weights=weights)
    return _loss(params, tokens, targets, positions, segment_ids, config, n_tokens, weights)


def model_grad(params, tokens, targets, positions=None, segment_ids=None, *,
               config: ModelConfig, n_tokens: int | None = None, weights=None):
    check_args(params, tokens, positions, segment_ids, None, config=config, weights=weights)
    names = trainable(config)
    wrt = set(names)
    leaves = {n: p.detach().requires_grad_(n in wrt) for n, p in params.items()}
    with torch.enable_grad():
        loss, metrics = _loss(leaves, tokens, targets, positions, segment_ids, config, n_tokens,
                              weights)
        grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    out = {n: torch.zeros_like(leaves[n]) if g is None else g.to(leaves[n].dtype)
           for n, g in zip(names, grads, strict=True)}
    return loss.detach(), metrics, out
