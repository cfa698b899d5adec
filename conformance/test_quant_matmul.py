"""Conformance of quant_matmul: forward, gradient (x only), error inputs, and its properties:
INT4 equals INT8 on the unpacked zero-shifted codes; equal scales over the groups of a row
equal one per-channel scale."""

from __future__ import annotations

import numpy as np
from hypothesis import given

from lmspec.conformance import _check as check
from lmspec.spec import Case
from lmspec.spec.quant_matmul import COMPONENT

STEM = COMPONENT.stem

test_forward, test_backward, test_errors = check.standard_tests(COMPONENT)


def _unpack(packed: np.ndarray) -> np.ndarray:
    """(N, K/2) bytes -> (N, K) codes, element 2j in the low nibble (the spec's layout)."""
    p = np.asarray(packed, np.int64)
    return np.stack([p & 0x0F, p >> 4], axis=-1).reshape(p.shape[0], -1)


@given(case=COMPONENT.cases())
def test_int4_equals_int8_on_shifted_codes(target, case):
    """bits=4 with codes q and zero points z is bits=8 with the codes q - z (in -15..15):
    the nibble order, the zero points' groups and the packing are the only differences."""
    if case.params["bits"] != 4:
        return
    a, gs = case.arrays, case.params["group_size"]
    codes = _unpack(a["packed"]) - np.repeat(np.asarray(a["zeros"], np.int64), gs, axis=1)
    int8 = Case(dict(a, packed=codes.astype(np.int8), zeros=None), dict(case.params, bits=8))
    check.check_same(target, "int4_is_shifted_int8", STEM, case, int8)


@given(case=COMPONENT.cases())
def test_equal_group_scales_equal_per_channel(target, case):
    """Every group of a row given the row's first scale and zero point equals group_size = K
    (one scale per output channel)."""
    a, p = case.arrays, case.params
    k = a["x"].shape[1]
    grouped = dict(a, scales=np.repeat(a["scales"][:, :1], a["scales"].shape[1], axis=1))
    channel = dict(a, scales=a["scales"][:, :1])
    if a["zeros"] is not None:
        grouped["zeros"] = np.repeat(a["zeros"][:, :1], a["zeros"].shape[1], axis=1)
        channel["zeros"] = a["zeros"][:, :1]
    check.check_same(target, "per_channel_is_one_group", STEM, Case(grouped, p),
                     Case(channel, dict(p, group_size=k)))
