"""Chunked linear attention in Triton (GLA / flash-linear-attention's chunk form; Lightning-2).

One program per (batch, head) walks the chunks in order with the (Dk, Dv) state in float32
registers: per chunk, the intra-chunk masked decay product plus the decayed state term, then
the state update. Forward only: the backward recomputes with autograd over the torch chunked
form (``linear_attention.chunked``), which is exact but not fused.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FEATURE_MAPS = {"identity": 0, "elu1": 1, "relu": 2}


@triton.jit
def _phi(x, FEATURE: tl.constexpr):
    if FEATURE == 1:
        x = tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))
    elif FEATURE == 2:
        x = tl.maximum(x, 0.0)
    return x


@triton.jit
def _linear_attention_fwd_kernel(q_ptr, k_ptr, v_ptr, ld_ptr, s0_ptr, out_ptr, sT_ptr,
                                 n_heads, seq_len, dk, dv, scale,
                                 CHUNK: tl.constexpr, HAS_DECAY: tl.constexpr,
                                 HAS_STATE: tl.constexpr, FEATURE: tl.constexpr,
                                 BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
                                 BLOCK_V: tl.constexpr):
    # q, k: (B*H, T, Dk); v, out: (B*H, T, Dv); s0, sT: (B*H, Dk, Dv); all contiguous
    bh = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_C)
    kcols, vcols = tl.arange(0, BLOCK_K), tl.arange(0, BLOCK_V)
    kmask, vmask = kcols < dk, vcols < dv
    smask = kmask[:, None] & vmask[None, :]
    ld = 0.0
    if HAS_DECAY:
        ld = tl.load(ld_ptr + bh % n_heads).to(tl.float32)
    state = tl.zeros((BLOCK_K, BLOCK_V), dtype=tl.float32)
    s_offs = bh * dk * dv + kcols[:, None] * dv + vcols[None, :]
    if HAS_STATE:
        state = tl.load(s0_ptr + s_offs, mask=smask, other=0.0).to(tl.float32)
    t_f = rows.to(tl.float32)
    for c0 in range(0, seq_len, CHUNK):
        n = tl.minimum(seq_len - c0, CHUNK)  # rows in this chunk
        valid = rows < n
        t_idx = bh * seq_len + c0 + rows
        qk_mask = valid[:, None] & kmask[None, :]
        q = tl.load(q_ptr + t_idx[:, None] * dk + kcols[None, :], mask=qk_mask, other=0.0)
        k = tl.load(k_ptr + t_idx[:, None] * dk + kcols[None, :], mask=qk_mask, other=0.0)
        v = tl.load(v_ptr + t_idx[:, None] * dv + vcols[None, :],
                    mask=valid[:, None] & vmask[None, :], other=0.0).to(tl.float32)
        # phi(0) may be 1 (elu1): padding rows and columns are zeroed after the map
        q = tl.where(qk_mask, _phi(q.to(tl.float32), FEATURE), 0.0)
        k = tl.where(qk_mask, _phi(k.to(tl.float32), FEATURE), 0.0)
        lower = rows[None, :] <= rows[:, None]  # (C, C): s <= t
        diff = tl.where(lower, t_f[:, None] - t_f[None, :], 0.0)
        decay = tl.where(lower, tl.exp(diff * ld), 0.0)  # D_ts = gamma^(t - s)
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * decay
        o = tl.dot(scores, v, input_precision="ieee")
        o += tl.exp((t_f + 1.0) * ld)[:, None] * tl.dot(q, state, input_precision="ieee")
        tl.store(out_ptr + t_idx[:, None] * dv + vcols[None, :], o * scale,
                 mask=valid[:, None] & vmask[None, :])
        k_dec = k * tl.where(valid, tl.exp((n - 1 - t_f) * ld), 0.0)[:, None]
        state = tl.exp(n * ld) * state + tl.dot(tl.trans(k_dec), v, input_precision="ieee")
    tl.store(sT_ptr + s_offs, state, mask=smask)


def _block(n: int) -> int:
    """tl.dot needs every dimension >= 16 and a power of two."""
    return max(16, triton.next_power_of_2(n))


def linear_attention_forward(q, k, v, log_decay, initial_state, feature_map: str,
                             chunk_size: int, scale: float):
    """(B, T, H, .) -> out (B, T, H, Dv) float32, final state (B, H, Dk, Dv) float32."""
    b, t, h, dk = q.shape
    dv = v.shape[3]
    qh, kh, vh = (x.transpose(1, 2).reshape(b * h, t, x.shape[3]).contiguous()
                  for x in (q, k, v))
    out = torch.empty((b * h, t, dv), dtype=torch.float32, device=q.device)
    s_t = torch.empty((b * h, dk, dv), dtype=torch.float32, device=q.device)
    s0 = None if initial_state is None else initial_state.reshape(b * h, dk, dv).contiguous()
    ld = None if log_decay is None else log_decay.to(torch.float32).contiguous()
    if b * h:
        _linear_attention_fwd_kernel[(b * h,)](
            qh, kh, vh, qh if ld is None else ld, s_t if s0 is None else s0, out, s_t, h, t, dk,
            dv, scale, CHUNK=chunk_size, HAS_DECAY=ld is not None, HAS_STATE=s0 is not None,
            FEATURE=FEATURE_MAPS[feature_map], BLOCK_C=_block(chunk_size), BLOCK_K=_block(dk),
            BLOCK_V=_block(dv))
    return out.reshape(b, h, t, dv).transpose(1, 2), s_t.reshape(b, h, dk, dv)


class LinearAttentionFunction(torch.autograd.Function):
    """Triton forward; backward by autograd over the torch chunked form (recomputed)."""

    @staticmethod
    def forward(ctx, q, k, v, initial_state, log_decay, feature_map: str, chunk_size: int,
                scale: float):
        out, s_t = linear_attention_forward(q, k, v, log_decay, initial_state, feature_map,
                                            chunk_size, scale)
        ctx.save_for_backward(q, k, v, initial_state, log_decay)
        ctx.config = (feature_map, chunk_size, scale)
        return out.to(q.dtype), s_t

    @staticmethod
    def backward(ctx, dout, dstate):
        from lmspec.backends.torch_triton.linear_attention import chunked, prepare

        q, k, v, s0, ld = ctx.saved_tensors
        feature_map, chunk_size, scale = ctx.config
        leaves = [x.detach().requires_grad_(True) if x is not None else None
                  for x in (q, k, v, s0)]
        with torch.enable_grad():
            qf, kf, vf, s, ldc = prepare(*leaves[:3], ld, leaves[3], feature_map)
            out, s_t = chunked(qf, kf, vf, s, ldc, scale, chunk_size)
            wrt = [x for x in leaves if x is not None]
            # an empty sequence without initial_state leaves outputs that no input reaches
            pairs = [(o, g.to(o.dtype)) for o, g in ((out.transpose(1, 2), dout), (s_t, dstate))
                     if o.requires_grad]
            grads = (torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs],
                                         allow_unused=True) if pairs else [None] * len(wrt))
        it = iter(grads)
        result = [None if x is None else next(it) for x in leaves]
        result = [torch.zeros_like(x) if g is None and x is not None else g
                  for g, x in zip(result, leaves, strict=True)]
        return (*result, None, None, None, None)


def chunked_triton(q, k, v, log_decay, initial_state, feature_map: str, chunk_size: int,
                   scale: float):
    """The chunked form with the Triton forward (arguments already checked)."""
    return LinearAttentionFunction.apply(q, k, v, initial_state, log_decay, feature_map,
                                         chunk_size, scale)
