"""The peers backend: what PyTorch and HF transformers already ship, behind the thinnest adapters.

Each stem maps onto the library function users actually call. Every adapter step that changes
the library's behaviour is named here (and in a comment where it happens), because the report
shows users what the libraries do differently from the spec:

- all stems: the spec's ``check_args`` (and value checks) run first, so bad inputs raise the
  spec's errors rather than the library's.
- rms_norm: ``F.rms_norm`` with ``weight_offset + weight`` (no offset parameter in torch).
- layer_norm: ``F.layer_norm`` with ``weight_offset + weight``.
- softmax / log_softmax: ``torch.softmax`` / ``F.log_softmax``, no change.
- embedding: ``F.embedding`` after the spec's id range check (torch raises its own IndexError
  without naming ``ids``).
- cross_entropy: ``F.cross_entropy(reduction="sum")`` divided by ``max(n, 1)`` (torch's
  ``"mean"`` gives NaN when every target is ignored; the spec gives 0); logits upcast to
  float32 first, as HF's ``ForCausalLMLoss`` does; z-loss added from ``torch.logsumexp``
  (torch has none).
- sdpa: ``F.scaled_dot_product_attention`` with an explicit boolean mask (its ``is_causal``
  is top-left aligned; the spec's causal is bottom-right) and ``enable_gqa``; lse from
  ``aten._scaled_dot_product_flash_attention_for_cpu`` when no gradient is needed (its lse
  has no gradient and is 0, not -inf, on fully masked rows: set to -inf), otherwise
  ``max + log(sum(exp(s - max)))`` over the masked float32 scores (not ``torch.logsumexp``:
  its backward, ``exp(s - lse)``, is ~20x less accurate at |s| ~ 30). softcap:
  NotImplementedError.
- swiglu / geglu: HF ``LlamaMLP`` / ``GemmaMLP`` called with the spec's weights (transposed to
  nn.Linear's (out, in)) through ``torch.func.functional_call``, so gradients reach them.
  geglu "none": ``GemmaConfig`` rewrites ``hidden_act="gelu"`` to the tanh approximation, so
  the exact GELU is set on the config after construction.
- rope: HF ``GPTNeoXRotaryEmbedding`` + GPT-NeoX's ``apply_rotary_pos_emb`` (Llama's default
  rope ignores ``partial_rotary_factor`` and its apply function has no pass-through); static
  NTK passed as default rope with the adjusted theta (HF's "dynamic" is a different method);
  interleaved through DeepSeek-V3's ``apply_rotary_pos_emb_interleave``, whose output comes
  back de-interleaved (half-split layout): re-interleaved here.
- model / model_loss / model_grad: HF ``LlamaForCausalLM``, ``MistralForCausalLM``,
  ``Qwen2ForCausalLM``, ``Qwen3ForCausalLM``, ``MixtralForCausalLM``, ``Qwen3MoeForCausalLM``
  or ``DeepseekV3ForCausalLM`` from spec/_checkpoint's ``config_to_hf``, built once per config
  (``attn_implementation="sdpa"``, ``experts_implementation="eager"``) and called with the
  spec's weights through ``functional_call`` (transposed; experts fused into HF's in-memory
  ``gate_up_proj`` / ``down_proj``). A Llama config LlamaConfig refuses (hidden size no
  multiple of the head count) or with a sliding window runs on Mistral's class, the same
  function. Positions go in as ``position_ids``, with an all-ones attention mask: without one
  (and with ``use_cache=False``) HF reads packed documents off any position that is not the
  previous one + 1. Segment ids go through exactly that packing detection (no mask);
  NotImplementedError where the spec's documents are not those runs. Caches through a
  config-less ``DynamicCache`` (with the config, sliding layers keep only the last window).
  Loss: HF's ``ForCausalLMLoss`` with ``shift_labels`` = the targets and
  ``num_items_in_batch`` = max(n, 1) (0 gives NaN), plus the z-loss (HF has none); the MoE
  balance and router z terms by the spec's formulas from HF's router outputs (logits and
  selected ids, hooked): HF's ``load_balancing_loss_func`` pools all layers' tokens into one
  loss and is k times the spec's "switch" term; HF has no sequence-wise or router z-loss.
  NotImplementedError: lightning layers, mtp_depth > 0 in the loss, capacity_factor, partial
  rotary, interleaved RoPE outside MLA, static NTK, qk_norm with attention biases, per-layer
  windows without Qwen2/3, shared experts or gates outside DeepSeek-V3 (and DeepSeek-V3
  without them), Mixtral without norm_topk_prob or with dense layers, masked_group_fill
  "zero", MLA with norm_eps != 1e-6 (HF's latent norms always use 1e-6): what config_to_hf
  or HF's classes refuse, or compute differently.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_dtypes
import numpy as np
import torch

from lmspec.backends._torch_device import torch_device
from lmspec.backends.peers.cross_entropy import cross_entropy
from lmspec.backends.peers.embedding import embedding
from lmspec.backends.peers.geglu import geglu
from lmspec.backends.peers.layer_norm import layer_norm
from lmspec.backends.peers.log_softmax import log_softmax
from lmspec.backends.peers.model import model, model_grad, model_loss
from lmspec.backends.peers.rms_norm import rms_norm
from lmspec.backends.peers.rope import rope
from lmspec.backends.peers.sdpa import sdpa
from lmspec.backends.peers.softmax import softmax
from lmspec.backends.peers.swiglu import swiglu

NAME = "peers"
DTYPES = ("float32", "bfloat16", "float16")

__all__ = ["DTYPES", "NAME", "asarray", "cross_entropy", "embedding", "geglu", "layer_norm",
           "log_softmax", "model", "model_grad", "model_loss", "rms_norm", "rope", "sdpa",
           "softmax", "swiglu", "to_numpy", "vjp"]

_TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32,
                 "bfloat16": torch.bfloat16, "float16": torch.float16}


def asarray(a: np.ndarray, dtype: str | None) -> torch.Tensor:
    """A NumPy array to a torch tensor; floats converted to ``dtype``, integers kept."""
    a = np.asarray(a)
    if a.dtype.kind in "iub":
        return torch.from_numpy(a.astype(np.int64, copy=True)).to(torch_device())
    # via float64: torch.from_numpy does not read ml_dtypes.bfloat16; exact for every float
    t = torch.from_numpy(np.asarray(a, dtype=np.float64).copy())
    return (t if dtype is None else t.to(_TORCH_DTYPES[dtype])).to(torch_device())


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Exact conversion back: bfloat16 goes through float32 to ml_dtypes.bfloat16."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy().copy()


def vjp(fn: Callable, arrays: dict, params: dict, cotangents: tuple, wrt: tuple) -> dict:
    """Generic VJP by autograd: gradients of ``fn``'s outputs, weighted by ``cotangents``."""
    leaves = {n: arrays[n].detach().clone().requires_grad_(True)
              for n in wrt if arrays.get(n) is not None}
    with torch.enable_grad():
        out = fn(**{**arrays, **leaves}, **params)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        pairs = [(o, ct) for o, ct in zip(outs, cotangents, strict=True)
                 if ct is not None and o.requires_grad]
        grads = torch.autograd.grad([o for o, _ in pairs],
                                    list(leaves.values()),
                                    grad_outputs=[ct.to(o.dtype) for o, ct in pairs],
                                    allow_unused=True) if pairs and leaves else ()
    result: dict = {n: None for n in wrt}
    for (n, leaf), g in zip(leaves.items(), grads or [None] * len(leaves), strict=True):
        result[n] = torch.zeros_like(leaf) if g is None else g
    return result
