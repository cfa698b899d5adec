"""lightning_attention reference vs finite differences and linear_attention."""

from __future__ import annotations

import numpy as np
import pytest
from _refcheck import FD_SETTINGS, assert_close, fd_check, rng_case
from hypothesis import given

from lmspec.reference import lightning_attention, linear_attention
from lmspec.spec import component

STEPS = {"q": 1e-6, "k": 1e-6, "v": 1e-6, "initial_state": 1e-6}


@FD_SETTINGS
@given(component("lightning_attention").cases())
def test_vjp_matches_finite_differences(case):
    fd_check("lightning_attention", case, STEPS)


@pytest.mark.parametrize("block", [1, 2, 4, 5, 16])
@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_equals_linear_attention_with_identity_map(block, form):
    shapes = {"q": (2, 11, 3, 4), "k": (2, 11, 3, 4), "v": (2, 11, 3, 2),
              "initial_state": (2, 3, 4, 2)}
    # MiniMax-01's decay: slope 2^(-8 i / H) style per head, here -log_decay in (0, 1]
    c = rng_case(shapes, seed=block, extra={"log_decay": -(2.0 ** -np.arange(3.0))})
    got = lightning_attention(**c.arrays, block_size=block, scale=0.3)
    want = linear_attention(**c.arrays, form=form, scale=0.3)
    for x, y in zip(got, want, strict=True):
        assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_no_decay_one_block_is_masked_qk_v():
    c = rng_case({"q": (1, 4, 1, 3), "k": (1, 4, 1, 3), "v": (1, 4, 1, 2)})
    q, k, v = (c.arrays[n][0, :, 0] for n in "qkv")
    out, s = lightning_attention(c.arrays["q"], c.arrays["k"], c.arrays["v"])
    assert_close(out[0, :, 0], np.tril(q @ k.T) @ v, rtol=1e-13)
    assert_close(s[0, 0], k.T @ v, rtol=1e-13)
