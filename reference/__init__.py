"""lmspec.reference: the NumPy oracle, one module per spec stem, float64 unless told otherwise.

``from lmspec.reference import sdpa`` gives the function; ``sdpa_vjp`` its hand-written
backward. ``computing_in(dtype)`` evaluates it in a lower dtype (the naive baseline).
"""

from lmspec.reference._numerics import computing_in
from lmspec.reference.attention_merge import attention_merge, attention_merge_vjp
from lmspec.reference.awq import awq
from lmspec.reference.bpe_train import bpe_train
from lmspec.reference.cross_entropy import cross_entropy, cross_entropy_vjp
from lmspec.reference.embedding import embedding, embedding_vjp
from lmspec.reference.gae import gae
from lmspec.reference.geglu import geglu, geglu_vjp
from lmspec.reference.gptq import gptq
from lmspec.reference.grpo_loss import grpo_loss, grpo_loss_vjp
from lmspec.reference.kto_loss import kto_loss, kto_loss_vjp
from lmspec.reference.layer_norm import layer_norm, layer_norm_vjp
from lmspec.reference.lightning_attention import lightning_attention, lightning_attention_vjp
from lmspec.reference.linear_attention import linear_attention, linear_attention_vjp
from lmspec.reference.log_softmax import log_softmax, log_softmax_vjp
from lmspec.reference.mla import mla, mla_vjp
from lmspec.reference.model import model, model_grad, model_loss
from lmspec.reference.moe_balance_loss import moe_balance_loss, moe_balance_loss_vjp
from lmspec.reference.moe_bias_update import moe_bias_update
from lmspec.reference.moe_layer import moe_layer, moe_layer_vjp
from lmspec.reference.moe_router import moe_router, moe_router_vjp
from lmspec.reference.ppo_loss import ppo_loss, ppo_loss_vjp
from lmspec.reference.preference_loss import preference_loss, preference_loss_vjp
from lmspec.reference.quant_fp4 import dequant_fp4, quant_fp4
from lmspec.reference.quant_fp8 import dequant_fp8, quant_fp8
from lmspec.reference.quant_int4 import (
    dequant_int4,
    pack_int4,
    quant_int4,
    rtn_int4_codes,
    unpack_int4,
)
from lmspec.reference.quant_int8 import dequant_int8, quant_int8
from lmspec.reference.quant_kv_cache import quant_kv_cache
from lmspec.reference.quant_matmul import quant_matmul, quant_matmul_vjp
from lmspec.reference.rejection_sample import rejection_sample
from lmspec.reference.reward_model_loss import reward_model_loss, reward_model_loss_vjp
from lmspec.reference.rms_norm import rms_norm, rms_norm_vjp
from lmspec.reference.rope import rope, rope_frequencies, rope_vjp
from lmspec.reference.sdpa import sdpa, sdpa_vjp, visible
from lmspec.reference.sequence_logprob import sequence_logprob, sequence_logprob_vjp
from lmspec.reference.softmax import softmax, softmax_vjp
from lmspec.reference.swiglu import swiglu, swiglu_vjp
from lmspec.reference.tokenizer import (
    StreamDecoder,
    bpe_encode_piece,
    load_gpt2,
    load_hf_json,
    load_preset,
    load_tiktoken,
    pretokenize,
    save_gpt2,
    save_hf_json,
    save_tiktoken,
    tokenizer,
)
from lmspec.reference.train_step import train_step

__all__ = [
    "attention_merge", "attention_merge_vjp", "lightning_attention", "lightning_attention_vjp",
    "linear_attention", "linear_attention_vjp",
    "computing_in", "cross_entropy", "cross_entropy_vjp", "embedding", "embedding_vjp", "geglu",
    "geglu_vjp", "layer_norm", "layer_norm_vjp", "log_softmax", "log_softmax_vjp", "mla",
    "mla_vjp", "model", "model_grad", "model_loss", "moe_layer", "moe_layer_vjp", "rms_norm",
    "moe_balance_loss", "moe_balance_loss_vjp", "moe_bias_update", "moe_router",
    "moe_router_vjp",
    "dequant_fp4", "dequant_fp8", "dequant_int4", "dequant_int8", "pack_int4", "quant_fp4",
    "quant_fp8", "quant_int4", "quant_int8", "rtn_int4_codes", "unpack_int4",
    "quant_matmul", "quant_matmul_vjp", "gptq", "awq", "quant_kv_cache", "rejection_sample",
    "gae", "grpo_loss", "grpo_loss_vjp", "ppo_loss", "ppo_loss_vjp",
    "preference_loss", "preference_loss_vjp", "sequence_logprob", "sequence_logprob_vjp",
    "reward_model_loss", "reward_model_loss_vjp",
    "kto_loss", "kto_loss_vjp",
    "rms_norm_vjp", "rope", "rope_frequencies", "rope_vjp", "sdpa", "sdpa_vjp", "softmax",
    "softmax_vjp", "swiglu", "swiglu_vjp", "train_step", "visible",
    "bpe_train", "tokenizer", "StreamDecoder", "bpe_encode_piece", "load_gpt2", "load_hf_json",
    "load_preset", "load_tiktoken", "pretokenize", "save_gpt2", "save_hf_json", "save_tiktoken",
]
