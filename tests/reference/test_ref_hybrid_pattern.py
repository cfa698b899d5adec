"""Hybrid layer patterns (spec.linear_attention.HybridPattern) against hand-written layouts."""

from __future__ import annotations

import pytest

from lmspec.spec.linear_attention import HybridPattern


def test_minimax01_is_seven_lightning_then_one_softmax():
    layers = HybridPattern(n_layers=16, linear_per_softmax=7).layers()
    assert layers == (("linear",) * 7 + ("softmax",)) * 2


def test_softmax_first_and_plain_transformer():
    assert HybridPattern(4, 1, softmax_first=True).layers() == (
        "softmax", "linear", "softmax", "linear")
    assert HybridPattern(3, 0).layers() == ("softmax",) * 3


def test_ratio_holds_for_any_length():
    for n in range(0, 40):
        layers = HybridPattern(n, 3).layers()
        assert len(layers) == n and layers.count("softmax") == n // 4


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="linear_per_softmax"):
        HybridPattern(8, -1)
