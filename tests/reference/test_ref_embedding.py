"""Embedding reference vs finite differences, a hand scatter-add, and torch F.embedding."""

from __future__ import annotations

import numpy as np
import pytest
from _refcheck import FD_SETTINGS, assert_close, fd_check
from hypothesis import given

from lmspec.reference import embedding, embedding_vjp
from lmspec.spec import Case, component


@FD_SETTINGS
@given(component("embedding").cases())
def test_vjp_matches_finite_differences(case):
    fd_check("embedding", case, {"table": 1.0})


@pytest.mark.parametrize("ids", [[[2, 0, 2], [2, 2, 2]], [], [[4]]])
def test_vjp_edge_cases(ids):
    # repeated ids, an empty id array, and the last row
    table = np.random.default_rng(0).standard_normal((5, 3))
    case = Case({"ids": np.array(ids, np.int64), "table": table}, {})
    fd_check("embedding", case, {"table": 1.0})


def test_hand_scatter_add():
    table = np.arange(12.0).reshape(4, 3)
    ids = np.array([[2, 0, 2]])
    assert_close(embedding(ids, table), [[[6, 7, 8], [0, 1, 2], [6, 7, 8]]], atol=0)
    dout = np.array([[[1.0, 0, 0], [0, 1, 0], [0, 0, 10]]])
    # row 2 gets dout[0] + dout[2]; row 0 gets dout[1]; rows 1 and 3 exactly zero
    want = [[0, 1, 0], [0, 0, 0], [1, 0, 10], [0, 0, 0]]
    assert_close(embedding_vjp(dout, ids, table)["table"], want, atol=0)
    assert embedding(np.zeros((0, 2), np.int64), table).shape == (0, 2, 3)


def test_against_torch_functional():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    table, ids = rng.standard_normal((7, 5)), rng.integers(0, 3, (4, 6))  # many repeats
    dout = rng.standard_normal((4, 6, 5))
    tt = torch.tensor(table, requires_grad=True)
    out = torch.nn.functional.embedding(torch.tensor(ids), tt)
    out.backward(torch.tensor(dout))
    assert_close(embedding(ids, table), out.detach().numpy(), atol=0)
    assert_close(embedding_vjp(dout, ids, table)["table"], tt.grad.numpy(), rtol=1e-14, atol=1e-15)
