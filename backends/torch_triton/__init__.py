"""The torch_triton backend: PyTorch for every component, Triton kernels for the hot paths.

Dispatch. Every component runs on torch ops. The hot paths also have Triton kernels (in
``kernels/``): rms_norm, rope, the swiglu gate and cross_entropy (forward and backward), sdpa
(FlashAttention-2 forward and backward), linear and lightning attention (the chunked forward),
quant_matmul (weight-only INT4/INT8) and the MoE layer's grouped GEMM. A call takes the kernel
when all its tensors are on a CUDA device and its float dtype is float32, bfloat16 or float16;
otherwise (CPU tensors, float64) it takes the torch path. Triton is imported only when a kernel
runs, so importing this backend on a CPU machine never imports triton.

sdpa on CPU uses torch's flash kernel (``_scaled_dot_product_flash_attention_for_cpu``, which
also returns the lse) for plain and square-causal attention, and explicit float32 math with
masks for the rest.

DTYPES leaves float64 out although every torch path runs in it: the float64 conformance runs
fail on reference rounding (see the report), not on this backend's answers.

The sibling backend ``triton_interpret`` (``interpret.py``) sets ``TRITON_INTERPRET=1`` before
importing triton and sends CPU tensors of the kernel stems through the kernels, so that
their correctness is checked on a machine without a GPU (small shapes only: the interpreter is
slow). Triton reads the flag when a kernel is defined, so the first of the two backends that
imports the kernels in a process fixes the mode for that process.
"""

from __future__ import annotations

from lmspec.backends.torch_triton._protocol import asarray, to_numpy, vjp
from lmspec.backends.torch_triton.attention_merge import attention_merge
from lmspec.backends.torch_triton.awq import awq
from lmspec.backends.torch_triton.cross_entropy import cross_entropy
from lmspec.backends.torch_triton.embedding import embedding
from lmspec.backends.torch_triton.gae import gae
from lmspec.backends.torch_triton.geglu import geglu
from lmspec.backends.torch_triton.gptq import gptq
from lmspec.backends.torch_triton.grpo_loss import grpo_loss
from lmspec.backends.torch_triton.kto_loss import kto_loss
from lmspec.backends.torch_triton.layer_norm import layer_norm
from lmspec.backends.torch_triton.lightning_attention import lightning_attention
from lmspec.backends.torch_triton.linear_attention import linear_attention
from lmspec.backends.torch_triton.log_softmax import log_softmax
from lmspec.backends.torch_triton.mla import mla
from lmspec.backends.torch_triton.model import model, model_grad, model_loss, model_packed
from lmspec.backends.torch_triton.moe_balance_loss import moe_balance_loss
from lmspec.backends.torch_triton.moe_bias_update import moe_bias_update
from lmspec.backends.torch_triton.moe_layer import moe_layer
from lmspec.backends.torch_triton.moe_router import moe_router
from lmspec.backends.torch_triton.ppo_loss import ppo_loss
from lmspec.backends.torch_triton.preference_loss import preference_loss
from lmspec.backends.torch_triton.quant_fp4 import quant_fp4
from lmspec.backends.torch_triton.quant_fp8 import quant_fp8
from lmspec.backends.torch_triton.quant_int4 import quant_int4
from lmspec.backends.torch_triton.quant_int8 import quant_int8
from lmspec.backends.torch_triton.quant_kv_cache import quant_kv_cache
from lmspec.backends.torch_triton.quant_matmul import quant_matmul
from lmspec.backends.torch_triton.rejection_sample import rejection_sample
from lmspec.backends.torch_triton.reward_model_loss import reward_model_loss
from lmspec.backends.torch_triton.rms_norm import rms_norm
from lmspec.backends.torch_triton.rope import rope
from lmspec.backends.torch_triton.sdpa import sdpa
from lmspec.backends.torch_triton.sequence_logprob import sequence_logprob
from lmspec.backends.torch_triton.softmax import softmax
from lmspec.backends.torch_triton.swiglu import swiglu
from lmspec.backends.torch_triton.train_step import train_step

NAME = "torch_triton"
DTYPES = ("float32", "bfloat16", "float16")

__all__ = [
    "DTYPES", "NAME", "asarray", "attention_merge", "cross_entropy", "embedding", "geglu",
    "layer_norm", "lightning_attention", "linear_attention", "log_softmax", "mla", "rms_norm",
    "model", "model_grad", "model_loss", "model_packed", "moe_balance_loss", "moe_bias_update",
    "moe_layer",
    "moe_router",
    "quant_fp4", "quant_fp8", "quant_int4", "quant_int8",
    "quant_matmul", "gptq", "awq", "quant_kv_cache", "rejection_sample",
    "gae", "grpo_loss", "ppo_loss",
    "preference_loss", "sequence_logprob",
    "reward_model_loss",
    "kto_loss",
    "rope", "sdpa", "softmax", "swiglu", "to_numpy", "train_step", "vjp",
]
