"""Calling an HF gated MLP module (LlamaMLP, GemmaMLP) with the spec's (in, out) weights."""

from __future__ import annotations

import torch
from torch.func import functional_call


def call_mlp(module: torch.nn.Module, x, w_gate, w_up, w_down):
    """``module(x)`` with its three projections replaced by the given weights.

    functional_call swaps the parameters for this call only, so autograd reaches the weights
    (copying them into the module would cut the graph). nn.Linear stores (out, in): transpose.
    HF's MLPs are square (down_proj back to hidden_size); F.linear does not check that, so a
    w_down of shape (F, D_out != D) goes through unchanged.
    """
    weights = {"gate_proj.weight": w_gate.T,  # (F, D)
               "up_proj.weight": w_up.T,  # (F, D)
               "down_proj.weight": w_down.T}  # (D_out, F)
    return functional_call(module, weights, (x,))
