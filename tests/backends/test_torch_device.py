"""The torch backends' device: $LMSPEC_TORCH_DEVICE, else the GPU when torch sees one, else the
CPU; a bad value is an error naming the variable."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lmspec.backends import _torch_device  # noqa: E402


@pytest.fixture(autouse=True)
def fresh():
    _torch_device.torch_device.cache_clear()
    yield
    _torch_device.torch_device.cache_clear()


def test_default_follows_cuda(monkeypatch):
    monkeypatch.delenv("LMSPEC_TORCH_DEVICE", raising=False)
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert _torch_device.torch_device().type == want


def test_explicit_cpu_puts_backend_arrays_there(monkeypatch):
    from lmspec.backends.torch_triton import asarray

    monkeypatch.setenv("LMSPEC_TORCH_DEVICE", "cpu")
    assert asarray(np.ones(3), "float32").device.type == "cpu"


@pytest.mark.parametrize("value, match", [("gpu0", "expected a torch device"),
                                          ("cuda:0", "no CUDA device")])
def test_bad_values_name_the_variable(monkeypatch, value, match):
    if value.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    monkeypatch.setenv("LMSPEC_TORCH_DEVICE", value)
    with pytest.raises(ValueError, match=f"LMSPEC_TORCH_DEVICE: .*{match}"):
        _torch_device.torch_device()
