"""sequence_logprob reference vs finite differences, hand values and torch's log_softmax."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _refcheck import FD_SETTINGS, assert_close, fd_check, max_abs
from hypothesis import assume, given

from lmspec.reference import sequence_logprob, sequence_logprob_vjp
from lmspec.spec import component


@FD_SETTINGS
@given(component("sequence_logprob").cases())
def test_vjp_matches_finite_differences(case):
    assume(max_abs(case.arrays["logits"]) <= 1e3)
    fd_check("sequence_logprob", case, {"logits": 1e-5})


def test_hand_values():
    # uniform logits over V = 4: every token has log-prob -ln 4; three response tokens
    logits = np.zeros((1, 5, 4))
    t = np.array([[-100, -100, 1, 3, 0]])
    mask = np.array([[0, 0, 1, 1, 1]])
    logps, counts = sequence_logprob(logits, t, mask)
    assert_close(logps, [-3 * math.log(4)], rtol=1e-15)
    assert_close(counts, [3.0], atol=0)
    # masked logits and targets are never read: huge values change nothing
    logits[0, :2] = [1e4, -1e4, 3.0, 0.0]
    assert_close(sequence_logprob(logits, t, mask)[0], logps, rtol=1e-15)
    # an empty batch and an empty response
    assert sequence_logprob(np.zeros((0, 3, 2)), np.zeros((0, 3), np.int64),
                            np.zeros((0, 3), np.int64))[0].shape == (0,)
    assert sequence_logprob(logits, t, np.zeros_like(mask))[0][0] == 0.0


def test_masked_logits_get_zero_gradient():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 4, 5))
    t = rng.integers(0, 5, (2, 4))
    mask = np.array([[0, 1, 1, 0], [1, 0, 0, 0]])
    g = sequence_logprob_vjp((np.ones(2), np.ones(2)), logits, t, mask)["logits"]
    assert np.all(g[mask == 0] == 0.0)


def test_against_torch_log_softmax():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((3, 6, 7)) * 3
    t = rng.integers(0, 7, (3, 6))
    mask = (rng.uniform(size=(3, 6)) < 0.6).astype(np.int64)
    lt = torch.tensor(logits, requires_grad=True)
    per = torch.log_softmax(lt, -1).gather(-1, torch.tensor(t)[..., None])[..., 0]
    want = (per * torch.tensor(mask)).sum(-1)
    g = np.array([0.3, -1.2, 2.0])
    want.backward(torch.tensor(g))
    assert_close(sequence_logprob(logits, t, mask)[0], want.detach().numpy(), rtol=1e-13)
    got = sequence_logprob_vjp((g, np.zeros(3)), logits, t, mask)["logits"]
    assert_close(got, lt.grad.numpy(), rtol=1e-12, atol=1e-15)
