"""Cross-entropy reference vs finite differences, hand values and torch (smoothing, ignore)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _refcheck import FD_SETTINGS, assert_close, fd_check, max_abs, rng_case
from hypothesis import assume, given

from lmspec.reference import cross_entropy, cross_entropy_vjp
from lmspec.spec import component

FD_MAX_LOGIT = 1e3  # see test_ref_softmax


@FD_SETTINGS
@given(component("cross_entropy").cases())
def test_vjp_matches_finite_differences(case):
    assume(max_abs(case.arrays["logits"]) <= FD_MAX_LOGIT)
    fd_check("cross_entropy", case, {"logits": 1e-5})


def _targets(v, shape, ignore, frac, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, v, shape)
    return np.where(rng.uniform(size=shape) < frac, ignore, t).astype(np.int64)


@pytest.mark.parametrize(
    ("frac", "smoothing", "z"),
    [
        (0.4, 0.0, 0.0),  # ignored rows
        (1.0, 0.1, 1e-4),  # all ignored
        (0.0, 0.1, 0.0),  # label smoothing
        (0.3, 1.0, 0.0),  # pure smoothing
        (0.3, 0.0, 0.1),  # z-loss
        (0.3, 0.2, 0.1),
    ],
)
def test_vjp_edge_cases(frac, smoothing, z):
    case = rng_case(
        {"logits": (2, 3, 7)},
        {"ignore_index": -100, "label_smoothing": smoothing, "z_loss": z},
        scale=3.0,
        extra={"targets": _targets(7, (2, 3), -100, frac)},
    )
    fd_check("cross_entropy", case, {"logits": 1e-5})


def test_all_ignored_is_zero_with_zero_gradient():
    logits = np.random.default_rng(0).standard_normal((4, 5))
    t = np.full(4, -1, np.int64)
    assert cross_entropy(logits, t, ignore_index=-1, z_loss=0.1) == 0.0
    g = cross_entropy_vjp(np.float64(1.0), logits, t, ignore_index=-1, z_loss=0.1)["logits"]
    assert_close(g, np.zeros((4, 5)), atol=0)
    # also with an empty batch
    assert cross_entropy(np.zeros((0, 5)), np.zeros(0, np.int64)) == 0.0


def test_hand_values():
    # uniform logits: p = 1/V for every class, loss = ln V whatever the targets
    assert_close(cross_entropy(np.zeros((3, 5)), np.array([0, 4, 2])), math.log(5), rtol=1e-15)
    # two classes, logits [0, ln 3] -> p = [1/4, 3/4], target 1, eps = 0.2:
    # nll = -ln(3/4); smooth = -(ln(1/4) + ln(3/4)) / 2; loss = 0.8 nll + 0.2 smooth
    want = 0.8 * -math.log(0.75) + 0.2 * -(math.log(0.25) + math.log(0.75)) / 2
    got = cross_entropy(np.array([[0.0, math.log(3)]]), np.array([1]), label_smoothing=0.2)
    assert_close(got, want, rtol=1e-15)
    # z-loss on zero logits V = 4: lse = ln 4, loss = ln 4 + z (ln 4)^2
    got = cross_entropy(np.zeros((2, 4)), np.array([1, 3]), z_loss=0.1)
    assert_close(got, math.log(4) + 0.1 * math.log(4) ** 2, rtol=1e-15)
    # an ignored row counts neither in the sum nor in n (its huge logits change nothing)
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [1e4, -1e4, 3.0, 0.0]])
    got = cross_entropy(logits, np.array([2, -100]))
    assert_close(got, math.log(4), rtol=1e-15)
    # 1e30-scale logits stay finite: target is the max -> loss 0; otherwise 1e30
    assert cross_entropy(np.array([[1e30, 0.0]]), np.array([0])) == 0.0
    assert_close(cross_entropy(np.array([[1e30, 0.0]]), np.array([1])), 1e30, rtol=1e-15)


def test_hand_gradient():
    # V = 2, logits [0, ln 3], target 0, dloss = 1: grad = p - onehot = [1/4 - 1, 3/4]
    g = cross_entropy_vjp(np.float64(1.0), np.array([[0.0, math.log(3)]]), np.array([0]))
    assert_close(g["logits"], [[-0.75, 0.75]], rtol=1e-15)
    # two valid rows halve it; dloss = 2 doubles it back
    g = cross_entropy_vjp(np.float64(2.0), np.zeros((2, 2)), np.array([0, 1]))["logits"]
    assert_close(g, [[-0.5, 0.5], [0.5, -0.5]], rtol=1e-15)


@pytest.mark.parametrize(("smoothing", "ignore"), [(0.0, -100), (0.1, -100), (0.3, 0), (1.0, 2)])
def test_against_torch_functional(smoothing, ignore):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((3, 4, 6)) * 3
    t = _targets(6, (3, 4), ignore, 0.3, seed=1)
    lt = torch.tensor(logits, requires_grad=True)
    # torch wants the class axis second: (N, V) after flattening
    loss = torch.nn.functional.cross_entropy(
        lt.reshape(-1, 6),
        torch.tensor(t).reshape(-1),
        ignore_index=ignore,
        label_smoothing=smoothing,
    )
    loss.backward(torch.tensor(1.7, dtype=torch.float64))
    params = {"ignore_index": ignore, "label_smoothing": smoothing}
    assert_close(cross_entropy(logits, t, **params), loss.item(), rtol=1e-14)
    g = cross_entropy_vjp(np.float64(1.7), logits, t, **params)["logits"]
    assert_close(g, lt.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_z_loss_against_torch_logsumexp():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    logits, t = rng.standard_normal((5, 7)) * 4, np.array([1, -100, 6, 0, -100])
    lt = torch.tensor(logits, requires_grad=True)
    valid = torch.tensor(t != -100)
    lse = torch.logsumexp(lt, -1)
    ce = torch.nn.functional.cross_entropy(lt, torch.tensor(t), reduction="sum")
    loss = (ce + 1e-2 * (lse[valid] ** 2).sum()) / valid.sum()
    loss.backward()
    assert_close(cross_entropy(logits, t, z_loss=1e-2), loss.item(), rtol=1e-14)
    g = cross_entropy_vjp(np.float64(1.0), logits, t, z_loss=1e-2)["logits"]
    assert_close(g, lt.grad.numpy(), rtol=1e-12, atol=1e-15)
