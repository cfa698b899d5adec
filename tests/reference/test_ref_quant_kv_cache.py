"""quant_kv_cache reference: the cache rows are quant_int8's / quant_fp8's per-token codes, the
attention is sdpa's, and the output error against full-precision sdpa is within the bound the
quantization errors imply."""

from __future__ import annotations

import numpy as np
import pytest
from _refcheck import assert_close

from lmspec import reference as R
from lmspec.reference.quant_kv_cache import kv_dequant, kv_quotients


@pytest.mark.parametrize("fmt", ["int8", "e4m3", "e5m2"])
def test_cache_rows_are_the_quantizers_per_token_codes(fmt):
    rng = np.random.default_rng(0)
    k = rng.standard_normal((2, 5, 3, 8)) * np.array([1.0, 30.0, 0.01])[:, None]
    if fmt == "int8":
        codes, scales = R.quant_int8(k, axis=-1)
        want = R.dequant_int8(codes, scales, -1)
    else:
        codes, scales = R.quant_fp8(k, fmt=fmt, granularity="token")
        want = R.dequant_fp8(codes, scales, fmt, "token")
    y, s = kv_quotients(k, fmt)
    assert np.array_equal(s, scales)
    from lmspec.reference.quant_kv_cache import encode
    assert_close(kv_dequant(encode(y, fmt), s, fmt), want)


@pytest.mark.parametrize("fmt", ["int8", "e4m3", "e5m2"])
@pytest.mark.parametrize("causal", [False, True])
def test_error_against_sdpa_is_bounded_by_the_quantization_error(fmt, causal):
    """|out_q - out| <= max|dV| + max|V| * ||dP||_1 per query, ||dP||_1 <= 2 max|dS| (softmax's
    l_inf -> l_1 Lipschitz constant), |dS| <= scale * ||q||_1 * max|dK| (per KV head)."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 7, 4, 16)) for _ in range(3))
    k, v = k[:, :, :2], v[:, :, :2]  # GQA: 4 query heads on 2 KV heads
    out = R.quant_kv_cache(q, k, v, fmt=fmt, causal=causal)
    exact = R.sdpa(q, k, v, causal=causal)[0]
    dk = np.abs(kv_dequant(*_codes(k, fmt), fmt) - k).max()
    dv = np.abs(kv_dequant(*_codes(v, fmt), fmt) - v).max()
    scale = 1 / np.sqrt(16)
    ds = scale * np.abs(q).sum(-1) * dk  # (B, Tq, Hq)
    bound = dv + np.abs(v).max() * 2 * ds
    err = np.abs(out - exact).max(-1)
    assert np.all(err <= bound) and err.max() > 0


def _codes(x, fmt):
    from lmspec.reference.quant_kv_cache import encode

    y, s = kv_quotients(x, fmt)
    return encode(y, fmt), s
