"""Benchmark of MLA decode (DeepSeek-V2, 2024): one new token over a 4k latent cache, the naive
form (K and V expanded per head) against the absorbed one (attention in latent space)."""

from __future__ import annotations

import numpy as np
import pytest

from lmspec.conformance import _bench

# DeepSeek-like small dims: H heads, dn/dr/dv head dims, dc latent rank, D model width
DIMS = {"n_heads": 16, "qk_nope_head_dim": 64, "qk_rope_head_dim": 32, "v_head_dim": 64,
        "kv_lora_rank": 256}
D = 1024
# (label, B, Tc): one new token after Tc cached ones
SHAPES = [("ctx512", 1, 512)] if _bench.QUICK else [("ctx4096", 1, 4096)]
FORMS = ("naive", "absorbed")


def _arrays(b: int, tc: int) -> dict:
    h, dn, dr, dv, dc = (DIMS[k] for k in ("n_heads", "qk_nope_head_dim", "qk_rope_head_dim",
                                          "v_head_dim", "kv_lora_rank"))
    arrays = _bench.rng_arrays({
        "x": (b, 1, D), "w_uq": (D, h * (dn + dr)), "w_dkv": (D, dc + dr),
        "kv_norm_weight": (dc,), "w_ukv": (dc, h * (dn + dv)), "w_o": (h * dv, D),
        "c_kv_cache": (b, tc, dc), "k_rope_cache": (b, tc, dr)})
    for w in ("w_uq", "w_dkv", "w_ukv", "w_o"):
        arrays[w] /= np.sqrt(arrays[w].shape[0])  # unit-variance activations
    positions = np.full((b, 1), tc, np.int64)  # the new token follows the cache
    return {**arrays, "positions": positions, "w_dq": None, "q_norm_weight": None}


def _impls() -> list:
    params = []
    for b in _bench.selected_backends():
        forms = ("naive",) if b.name == "reference" else FORMS
        params += [pytest.param((b, f), id=b.name if b.name == "reference" else f"{b.name}/{f}")
                   for f in forms]
    return params


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("impl", _impls())
def test_mla(benchmark, impl, shape):
    label, b, tc = shape
    backend, form = impl
    fn = _bench.backend_callable(backend, "mla", _arrays(b, tc), {**DIMS, "form": form})
    name = "reference" if backend.name == "reference" else f"{backend.name}/{form}"
    _bench.run(benchmark, fn, name, slow=backend.name == "reference")
