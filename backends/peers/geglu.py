"""GeGLU feed-forward (Shazeer, 2020) via HF transformers' GemmaMLP."""

from __future__ import annotations

from functools import cache

from transformers import GemmaConfig
from transformers.models.gemma.modeling_gemma import GemmaMLP

from lmspec.backends.peers._hf_mlp import call_mlp
from lmspec.spec.geglu import check_args

# spec approximate -> HF activation name (ACT2FN): tanh GELU and exact erf GELU
_ACTIVATIONS = {"tanh": "gelu_pytorch_tanh", "none": "gelu"}


@cache
def _mlp(d: int, f: int, approximate: str) -> GemmaMLP:
    """A GemmaMLP for hidden size d, intermediate size f (its own weights are never used)."""
    config = GemmaConfig(hidden_size=d, intermediate_size=f, num_attention_heads=1,
                         num_key_value_heads=1, head_dim=d)
    # adapter: GemmaConfig rewrites hidden_act="gelu" to the tanh approximation when it is
    # constructed (legacy Gemma checkpoints); set the activation after construction instead
    config.hidden_act = _ACTIVATIONS[approximate]
    return GemmaMLP(config)


def geglu(x, w_gate, w_up, w_down, *, approximate: str = "tanh"):
    check_args(x, w_gate, w_up, w_down, approximate=approximate)
    return call_mlp(_mlp(*w_gate.shape, approximate), x, w_gate, w_up, w_down)
