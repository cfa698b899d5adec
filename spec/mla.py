"""Multi-head latent attention (DeepSeek-V2, 2024; DeepSeek-V3, 2024), as HF transformers'
``DeepseekV3Attention``: low-rank latent KV with a decoupled, shared RoPE key; naive and
absorbed forms; the latent cache. Also ``kv_cache_size``, the KV-cache table of DeepSeek-V2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from lmspec.spec import _strategies as S
from lmspec.spec._contract import Case, Component, ErrorCase, is_integer_array, require, shape_of
from lmspec.spec.rope import RopeScaling, positions_for, scalings

FORMS = ("naive", "absorbed")


def mla(x, positions, w_uq, w_dkv, kv_norm_weight, w_ukv, w_o, w_dq=None, q_norm_weight=None,
        c_kv_cache=None, k_rope_cache=None, *, n_heads: int, qk_nope_head_dim: int,
        qk_rope_head_dim: int, v_head_dim: int, kv_lora_rank: int, theta: float = 10000.0,
        scaling: RopeScaling | None = None, mscale_all_dim: float = 0.0,
        interleaved: bool = True, eps: float = 1e-6, causal: bool = True, form: str = "naive"):
    """MLA over T new tokens that attend to a latent cache of Tc earlier ones plus themselves;
    returns ``(out, c_kv, k_rope)``: the output and the cache extended by the new tokens.

    Names: H = ``n_heads``, dn = ``qk_nope_head_dim``, dr = ``qk_rope_head_dim`` (even, >= 2),
    dv = ``v_head_dim``, dc = ``kv_lora_rank``, dq = q_lora_rank. Weights are stored (in, out):
    the math's ``x @ W`` (HF's ``nn.Linear.weight`` transposed). Shapes: ``x`` (B, T, D);
    ``positions`` (B, T) integer >= 0 (the new tokens' positions); ``w_dq`` (D, dq) and
    ``q_norm_weight`` (dq,), both or neither (HF ``q_a_proj``, ``q_a_layernorm``); ``w_uq``
    (dq or D, H*(dn+dr)) (``q_b_proj`` / ``q_proj``), per-head column blocks [nope dn | rope
    dr]; ``w_dkv`` (D, dc+dr) (``kv_a_proj_with_mqa``): columns [latent dc | rope key dr];
    ``kv_norm_weight`` (dc,) (``kv_a_layernorm``); ``w_ukv`` (dc, H*(dn+dv)) (``kv_b_proj``),
    per-head blocks [k_nope dn | v dv]; ``w_o`` (H*dv, D_out) (``o_proj``); ``c_kv_cache``
    (B, Tc, dc) and ``k_rope_cache`` (B, Tc, dr), both or neither (None: Tc = 0).

    Math (rms = RMSNorm with ``eps`` inside the root, rot = the RoPE below)::

        q      = rms(x @ w_dq) * q_norm_weight @ w_uq     (or x @ w_uq)  -> (B, T, H, dn+dr)
        q_nope, q_pe = q[..., :dn], rot(q[..., dn:])
        c_new  = rms((x @ w_dkv)[..., :dc]) * kv_norm_weight           (B, T, dc)
        kr_new = rot((x @ w_dkv)[..., dc:])                            (B, T, dr), shared by heads
        c_kv   = concat(c_kv_cache, c_new), k_rope = concat(k_rope_cache, kr_new)  (Tk = Tc + T)
        k_nope_h = c_kv @ W_uk_h,  v_h = c_kv @ W_uv_h   (W_uk_h, W_uv_h the head's w_ukv blocks)
        s_hij  = scale * (q_nope_hi . k_nope_hj + q_pe_hi . k_rope_j)
        o_hi   = sum_j softmax_j(s_hi) v_hj;   out = concat_h(o_h) @ w_o   (B, T, D_out)

    Attention is ``sdpa``'s: the T queries are the last T of the Tk keys (bottom-right), and
    ``causal`` lets query i see keys j <= i + Tc. ``scale = m**2 / sqrt(dn + dr)`` with
    ``m = 0.1 * mscale_all_dim * ln(factor) + 1`` when ``scaling`` is given, ``mscale_all_dim``
    is nonzero and ``scaling.factor > 1``, else m = 1 (HF ``yarn_apply_mscale``, for any
    scaling kind; DeepSeek's own model.py applies it only when its max_seq_len exceeds the
    original length). DeepSeek-V3's YaRN is ``RopeScaling("yarn", factor=40,
    original_max_position=4096, attention_factor=1.0)`` with ``mscale_all_dim=1.0``: HF sets
    the cos/sin factor to m(factor, mscale) / m(factor, mscale_all_dim), 1 when both are 1.

    RoPE (``rope`` with ``theta``, ``scaling`` on dr dims): with ``interleaved`` (HF's
    ``rope_interleave=True``, the default of DeepSeek-V3), the pairs are (x_{2i}, x_{2i+1})
    rotated by angle ``positions * inv_freq_i`` and the result is laid out de-interleaved,
    [rotated evens | rotated odds]: ``rot(x) = rope(P x, interleaved=False)`` with P the
    permutation taking index 2i -> i and 2i+1 -> i + dr/2 (HF's
    ``apply_rotary_pos_emb_interleave``). DeepSeek's model.py rotates the same pairs but keeps
    them interleaved: scores are identical, its cached k_pe is P^-1 of ours. With
    ``interleaved=False``: ``rot(x) = rope(x, interleaved=False)`` (half-split, HF's
    ``apply_rotary_pos_emb``). The cache holds the *rotated* rope key in this layout.

    ``form="absorbed"`` computes the same function as DeepSeek's inference (``attn_impl =
    "absorb"``): ``q_lat_h = q_nope_h @ W_uk_h^T`` (dc), ``s_hij = scale * (q_lat_hi . c_j +
    q_pe_hi . k_rope_j)``, ``out_h = (sum_j p_hij c_j) @ W_uv_h``; attention in latent space
    (one shared KV head of width dc+dr). ``"naive"`` expands K and V per head first. Both
    forms must agree; low-precision rounding differs between them.

    Decode: a call with the cache returned by earlier calls equals the matching rows of one
    causal pass over all tokens (the cache holds only the latent c and the rotated rope key,
    (dc + dr) numbers per token and layer). MHA as a special case: with dc = D, ``w_dkv =
    [I_D | W_kr]`` and ``kv_norm_weight = 1`` the latent is rms(x) and MLA is MHA whose keys
    and values read rms(x) through the per-head blocks of w_ukv and whose rope key is one head
    shared by all query heads (a per-head RoPE key has no MLA form). dr = 0 is rejected:
    MLA's decoupled RoPE key is its only position signal (the paper decouples it because RoPE
    on k_nope would block the absorption).

    Outputs: ``out`` (B, T, D_out), ``c_kv`` (B, Tc+T, dc), ``k_rope`` (B, Tc+T, dr), all in
    the dtype of x. Gradients: with respect to every float input (the cache included), through
    all three outputs.

    Rejected (ValueError naming the argument): shapes inconsistent with the dimensions, odd or
    zero dr, only one of w_dq/q_norm_weight or of the two caches, cache batch mismatch,
    ``eps <= 0``, an unknown ``form``; non-integer positions (TypeError).
    """
    check_args(x, positions, w_uq, w_dkv, kv_norm_weight, w_ukv, w_o, w_dq, q_norm_weight,
               c_kv_cache, k_rope_cache, n_heads=n_heads, qk_nope_head_dim=qk_nope_head_dim,
               qk_rope_head_dim=qk_rope_head_dim, v_head_dim=v_head_dim,
               kv_lora_rank=kv_lora_rank, eps=eps, form=form, scaling=scaling)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


def softmax_scale(qk_head_dim: int, scaling: RopeScaling | None, mscale_all_dim: float) -> float:
    """HF ``yarn_apply_mscale``: ``m**2 / sqrt(dn + dr)``, m the YaRN mscale of all dims."""
    scale = 1.0 / math.sqrt(qk_head_dim)
    if scaling is not None and mscale_all_dim and scaling.factor > 1:
        m = 0.1 * mscale_all_dim * math.log(scaling.factor) + 1.0
        scale *= m * m
    return scale


def _check_shape(name: str, a, want: tuple[int, ...], what: str) -> None:
    got = shape_of(a)
    require(got == want, ValueError, f"{name}: expected shape {what} = {want}, got {got}")


def check_args(x, positions, w_uq, w_dkv, kv_norm_weight, w_ukv, w_o, w_dq=None,
               q_norm_weight=None, c_kv_cache=None, k_rope_cache=None, *, n_heads: int,
               qk_nope_head_dim: int, qk_rope_head_dim: int, v_head_dim: int,
               kv_lora_rank: int, eps: float = 1e-6, form: str = "naive",
               scaling: RopeScaling | None = None, **_params) -> None:
    h, dn, dr, dv, dc = n_heads, qk_nope_head_dim, qk_rope_head_dim, v_head_dim, kv_lora_rank
    require(h >= 1, ValueError, f"n_heads: expected >= 1, got {h}")
    require(dn >= 1 and dv >= 1 and dc >= 1, ValueError,
            f"qk_nope_head_dim, v_head_dim, kv_lora_rank: expected >= 1, got {dn}, {dv}, {dc}")
    require(dr >= 2 and dr % 2 == 0, ValueError,
            f"qk_rope_head_dim: expected an even value >= 2 (the decoupled RoPE key), got {dr}")
    require(scaling is None or scaling.kind != "ntk" or dr > 2, ValueError,
            "qk_rope_head_dim: ntk scaling needs qk_rope_head_dim > 2")
    xs = shape_of(x)
    require(len(xs) == 3, ValueError, f"x: expected shape (B, T, D), got {xs}")
    b, t, d = xs
    require(shape_of(positions) == (b, t), ValueError,
            f"positions: expected shape {(b, t)} (B, T), got {shape_of(positions)}")
    require(is_integer_array(positions), TypeError, "positions: expected an integer array")
    require((w_dq is None) == (q_norm_weight is None), ValueError,
            "w_dq: w_dq and q_norm_weight must be given together (the query low-rank path)")
    q_in = d
    if w_dq is not None:
        ws = shape_of(w_dq)
        require(len(ws) == 2 and ws[0] == d, ValueError,
                f"w_dq: expected shape ({d}, dq), got {ws}")
        q_in = ws[1]
        _check_shape("q_norm_weight", q_norm_weight, (q_in,), "(dq,)")
    _check_shape("w_uq", w_uq, (q_in, h * (dn + dr)), "(dq or D, H*(dn+dr))")
    _check_shape("w_dkv", w_dkv, (d, dc + dr), "(D, dc+dr)")
    _check_shape("kv_norm_weight", kv_norm_weight, (dc,), "(dc,)")
    _check_shape("w_ukv", w_ukv, (dc, h * (dn + dv)), "(dc, H*(dn+dv))")
    os_ = shape_of(w_o)
    require(len(os_) == 2 and os_[0] == h * dv, ValueError,
            f"w_o: expected shape ({h * dv}, D_out) (H*dv, D_out), got {os_}")
    require((c_kv_cache is None) == (k_rope_cache is None), ValueError,
            "c_kv_cache: c_kv_cache and k_rope_cache must be given together")
    if c_kv_cache is not None:
        cs = shape_of(c_kv_cache)
        require(len(cs) == 3 and cs[0] == b and cs[2] == dc, ValueError,
                f"c_kv_cache: expected shape ({b}, Tc, {dc}) (B, Tc, dc), got {cs}")
        _check_shape("k_rope_cache", k_rope_cache, (b, cs[1], dr), "(B, Tc, dr)")
    require(eps > 0, ValueError, f"eps: expected > 0, got {eps}")
    require(form in FORMS, ValueError, f"form: expected one of {FORMS}, got {form!r}")


# ----------------------------------------------------------------------------- KV-cache size


@dataclass(frozen=True)
class KVCacheSize:
    """KV-cache elements per token and layer, and what that costs (DeepSeek-V2, Table 1)."""

    kind: str
    elements_per_token_per_layer: int
    n_layers: int
    bytes_per_element: float

    @property
    def elements_per_token(self) -> int:
        return self.elements_per_token_per_layer * self.n_layers

    @property
    def bytes_per_token(self) -> float:
        return self.elements_per_token * self.bytes_per_element

    def bytes_for(self, context_lengths, batch: int = 1) -> np.ndarray:
        """Cache bytes at each context length (for a memory-vs-context curve)."""
        return np.asarray(context_lengths, np.float64) * batch * self.bytes_per_token


KV_KINDS = ("mha", "gqa", "mqa", "mla")


def kv_cache_size(kind: str, *, n_layers: int, n_heads: int, head_dim: int,
                  n_kv_heads: int | None = None, kv_lora_rank: int | None = None,
                  qk_rope_head_dim: int | None = None,
                  bytes_per_element: float = 2) -> KVCacheSize:
    """Per-token KV-cache size, the DeepSeek-V2 paper's table (n_h heads of d_h, l layers):
    MHA ``2 n_h d_h l``; GQA ``2 n_g d_h l`` (n_g = ``n_kv_heads``); MQA ``2 d_h l``; MLA
    ``(d_c + d_h^R) l`` (``kv_lora_rank`` + ``qk_rope_head_dim``: only the latent and the
    shared rope key are cached). The paper's MLA example d_c = 4 d_h, d_h^R = d_h / 2 gives
    4.5 d_h l. A helper of the mla spec, not a component: it is arithmetic, with no arrays,
    backends or gradients.
    """
    require(kind in KV_KINDS, ValueError, f"kind: expected one of {KV_KINDS}, got {kind!r}")
    require(n_layers >= 1 and n_heads >= 1 and head_dim >= 1, ValueError,
            "n_layers, n_heads, head_dim: expected >= 1")
    if kind == "mha":
        per_layer = 2 * n_heads * head_dim
    elif kind == "mqa":
        per_layer = 2 * head_dim
    elif kind == "gqa":
        require(n_kv_heads is not None and 1 <= n_kv_heads <= n_heads
                and n_heads % n_kv_heads == 0, ValueError,
                f"n_kv_heads: expected a divisor of n_heads {n_heads}, got {n_kv_heads}")
        per_layer = 2 * n_kv_heads * head_dim
    else:
        require(kv_lora_rank is not None and kv_lora_rank >= 1, ValueError,
                f"kv_lora_rank: expected >= 1 for mla, got {kv_lora_rank}")
        require(qk_rope_head_dim is not None and qk_rope_head_dim >= 2
                and qk_rope_head_dim % 2 == 0, ValueError,
                f"qk_rope_head_dim: expected an even value >= 2 for mla (the decoupled RoPE "
                f"key, as mla requires), got {qk_rope_head_dim}")
        per_layer = kv_lora_rank + qk_rope_head_dim
    return KVCacheSize(kind, per_layer, n_layers, bytes_per_element)


# ----------------------------------------------------------------------------- strategies


@st.composite
def _cases(draw) -> Case:
    b = draw(S.sizes((0, 1, 2)))
    t = draw(S.sizes((0, 1, 2, 5)))
    h = draw(st.sampled_from((1, 2, 3)))
    dn, dr, dv = (draw(st.sampled_from(c)) for c in ((1, 2, 4), (2, 4), (1, 3, 4)))
    dc, d = draw(st.sampled_from((1, 3, 8))), draw(st.sampled_from((1, 4, 6)))
    dq = draw(st.sampled_from((None, 2, 5)))
    tc = draw(st.sampled_from((None, 0, 1, 3)))
    x_sc, w_sc = (0.1, 1.0, 4.0), (0.1, 0.3, 1.0)
    w = dict(scales=w_sc, styles=("normal", "uniform", "ties"))
    arrays = {
        "x": draw(S.float_arrays((b, t, d), scales=x_sc)),
        "positions": draw(positions_for(b, t)),
        "w_uq": draw(S.float_arrays((dq or d, h * (dn + dr)), **w)),
        "w_dkv": draw(S.float_arrays((d, dc + dr), **w)),
        "kv_norm_weight": draw(S.float_arrays((dc,), **w)),
        "w_ukv": draw(S.float_arrays((dc, h * (dn + dv)), **w)),
        "w_o": draw(S.float_arrays((h * dv, draw(st.sampled_from((d, 3)))), **w)),
        "w_dq": None if dq is None else draw(S.float_arrays((d, dq), **w)),
        "q_norm_weight": None if dq is None else draw(S.float_arrays((dq,), **w)),
        "c_kv_cache": None if tc is None else draw(S.float_arrays((b, tc, dc), scales=x_sc)),
        "k_rope_cache": None if tc is None else draw(S.float_arrays((b, tc, dr), scales=x_sc)),
    }
    scaling = draw(scalings())
    if scaling is not None and scaling.kind == "ntk" and dr <= 2:
        scaling = None
    params = {"n_heads": h, "qk_nope_head_dim": dn, "qk_rope_head_dim": dr, "v_head_dim": dv,
              "kv_lora_rank": dc, "theta": draw(st.sampled_from((10000.0, 10.0))),
              "scaling": scaling, "mscale_all_dim": draw(st.sampled_from((0.0, 1.0))),
              "interleaved": draw(st.booleans()), "eps": draw(st.sampled_from((1e-6, 1e-2))),
              "causal": draw(st.booleans()), "form": draw(st.sampled_from(FORMS))}
    return Case(arrays, params)


DIMS = {"n_heads": 2, "qk_nope_head_dim": 2, "qk_rope_head_dim": 2, "v_head_dim": 3,
        "kv_lora_rank": 4}


def _bad(override: dict | None = None, **params):
    def build():
        arrays = {"x": np.ones((1, 3, 5)), "positions": np.zeros((1, 3), np.int64),
                  "w_uq": np.ones((5, 8)), "w_dkv": np.ones((5, 6)),
                  "kv_norm_weight": np.ones(4), "w_ukv": np.ones((4, 10)),
                  "w_o": np.ones((6, 5)), "w_dq": None, "q_norm_weight": None,
                  "c_kv_cache": None, "k_rope_cache": None}
        return {**arrays, **(override or {})}, {**DIMS, **params}
    return build


COMPONENT = Component(
    stem="mla",
    coverage={"form": ("absorbed", "naive"), "interleaved": ("True", "False"),
              "causal": ("True", "False"),
              "w_dq": ("given", "absent"), "c_kv_cache": ("given", "absent"),
              "mscale_all_dim": ("0.0", "1.0"),
              "scaling": ("None", "linear", "llama3", "ntk", "yarn")},
    inputs=("x", "positions", "w_uq", "w_dkv", "kv_norm_weight", "w_ukv", "w_o", "w_dq",
            "q_norm_weight", "c_kv_cache", "k_rope_cache"),
    outputs=("out", "c_kv", "k_rope"),
    differentiable=("x", "w_uq", "w_dkv", "kv_norm_weight", "w_ukv", "w_o", "w_dq",
                    "q_norm_weight", "c_kv_cache", "k_rope_cache"),
    integer_inputs=("positions",),
    cases=_cases,
    errors=(
        ErrorCase("w_ukv of the wrong width", _bad({"w_ukv": np.ones((4, 9))}), ValueError,
                  r"w_ukv"),
        ErrorCase("odd rope head dim", _bad({"w_dkv": np.ones((5, 7))}, qk_rope_head_dim=3),
                  ValueError, r"qk_rope_head_dim"),
        ErrorCase("no rope head dim", _bad({"w_dkv": np.ones((5, 4))}, qk_rope_head_dim=0),
                  ValueError, r"qk_rope_head_dim"),
        ErrorCase("only one cache", _bad({"c_kv_cache": np.ones((1, 2, 4))}), ValueError,
                  r"c_kv_cache"),
        ErrorCase("w_dq without q_norm_weight", _bad({"w_dq": np.ones((5, 3))}), ValueError,
                  r"w_dq"),
        ErrorCase("unknown form", _bad(form="fused"), ValueError, r"form"),
        ErrorCase("float positions", _bad({"positions": np.zeros((1, 3))}), TypeError,
                  r"positions"),
    ),
    summary="MLA (DeepSeek-V2/V3, HF): latent KV + shared RoPE key; naive/absorbed; cache",
)
