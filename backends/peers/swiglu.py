"""SwiGLU feed-forward (Shazeer, 2020) via HF transformers' LlamaMLP."""

from __future__ import annotations

from functools import cache

from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from lmspec.backends.peers._hf_mlp import call_mlp
from lmspec.spec.swiglu import check_args


@cache
def _mlp(d: int, f: int) -> LlamaMLP:
    """A LlamaMLP for hidden size d and intermediate size f (its own weights are never used)."""
    config = LlamaConfig(hidden_size=d, intermediate_size=f, hidden_act="silu", mlp_bias=False,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=d)
    return LlamaMLP(config)


def swiglu(x, w_gate, w_up, w_down):
    check_args(x, w_gate, w_up, w_down)
    return call_mlp(_mlp(*w_gate.shape), x, w_gate, w_up, w_down)
