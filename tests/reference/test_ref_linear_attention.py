"""linear_attention reference vs finite differences, hand values and an explicit scalar loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _refcheck import FD_SETTINGS, assert_close, fd_check, rng_case
from hypothesis import given

from lmspec.reference import linear_attention, linear_attention_vjp
from lmspec.spec import Case, component

STEPS = {"q": 1e-6, "k": 1e-6, "v": 1e-6, "initial_state": 1e-6}
PARAMS = {"feature_map": "identity", "form": "parallel", "chunk_size": 16, "scale": None}


@FD_SETTINGS
@given(component("linear_attention").cases())
def test_vjp_matches_finite_differences(case):
    if case.params["feature_map"] == "relu":
        # finite differences straddle relu's kink at exact zeros: step away from it (the
        # relu'(0) = 0 convention is checked by hand below)
        case = Case({**case.arrays, **{n: np.where(case.arrays[n] == 0, 1e-3, case.arrays[n])
                                        for n in ("q", "k")}}, case.params)
    fd_check("linear_attention", case, STEPS)


def _case(b=2, t=7, h=2, dk=3, dv=4, decay=True, state=True, seed=0, **params):
    shapes = {"q": (b, t, h, dk), "k": (b, t, h, dk), "v": (b, t, h, dv),
              "initial_state": (b, h, dk, dv) if state else None}
    ld = -np.linspace(0.05, 1.0, h) if decay else None
    return rng_case(shapes, {**PARAMS, **params}, seed=seed, extra={"log_decay": ld})


def _loop(q, k, v, log_decay, s0, phi, scale):
    """An independent scalar-loop oracle: S_t = gamma S_{t-1} + phi(k_t)^T v_t."""
    b, t, h, dk = q.shape
    out = np.zeros(v.shape)
    final = np.zeros((b, h, dk, v.shape[3]))
    for bi in range(b):
        for hi in range(h):
            g = 1.0 if log_decay is None else math.exp(log_decay[hi])
            s = np.zeros((dk, v.shape[3])) if s0 is None else s0[bi, hi].copy()
            for ti in range(t):
                s = g * s + np.outer(phi(k[bi, ti, hi]), v[bi, ti, hi])
                out[bi, ti, hi] = scale * phi(q[bi, ti, hi]) @ s
            final[bi, hi] = s
    return out, final


PHI = {"identity": lambda x: x, "relu": lambda x: np.maximum(x, 0),
       "elu1": lambda x: np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))}


@pytest.mark.parametrize("form", ["parallel", "recurrent", "chunked"])
@pytest.mark.parametrize("feature_map", sorted(PHI))
@pytest.mark.parametrize("decay,state", [(True, True), (False, False), (True, False)])
def test_against_scalar_loop(form, feature_map, decay, state):
    c = _case(decay=decay, state=state, form=form, feature_map=feature_map, chunk_size=3,
              scale=0.7)
    a = c.arrays
    out, final = linear_attention(**a, **c.params)
    want_out, want_final = _loop(a["q"], a["k"], a["v"], a["log_decay"], a["initial_state"],
                                 PHI[feature_map], 0.7)
    assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    assert_close(final, want_final, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 8, 100])
def test_chunked_equals_parallel_for_every_chunk_size(chunk):
    c = _case(t=13, seed=chunk)
    par = linear_attention(**c.arrays, **c.params)
    chk = linear_attention(**c.arrays, **dict(c.params, form="chunked", chunk_size=chunk))
    for x, y in zip(par, chk, strict=True):
        assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_hand_values_two_tokens():
    # Dk = Dv = 1, gamma = 1/2: o0 = q0 k0 v0, o1 = q1 (k0 v0 / 2 + k1 v1), S = k0 v0 / 2 + k1 v1
    q = np.array([2.0, 3.0]).reshape(1, 2, 1, 1)
    k = np.array([5.0, 7.0]).reshape(1, 2, 1, 1)
    v = np.array([1.0, 10.0]).reshape(1, 2, 1, 1)
    out, s = linear_attention(q, k, v, np.array([math.log(0.5)]))
    assert_close(out.reshape(-1), [10.0, 3.0 * (2.5 + 70.0)], rtol=1e-15)
    assert_close(s.reshape(-1), [72.5], rtol=1e-15)
    # the initial state decays once per token: gamma^(t + 1)
    out, s = linear_attention(q, k * 0, v, np.array([math.log(0.5)]), np.ones((1, 1, 1, 1)))
    assert_close(out.reshape(-1), [2.0 * 0.5, 3.0 * 0.25], rtol=1e-15)
    assert_close(s.reshape(-1), [0.25], rtol=1e-15)


def test_empty_sequence_returns_the_initial_state():
    c = _case(t=0)
    out, s = linear_attention(**c.arrays, **c.params)
    assert out.shape == (2, 0, 2, 4)
    assert_close(s, c.arrays["initial_state"], rtol=0)


@pytest.mark.parametrize("name,params", [
    ("relu", {"feature_map": "relu"}),
    ("elu1, recurrent", {"feature_map": "elu1", "form": "recurrent"}),
    ("chunked 2 with state", {"form": "chunked", "chunk_size": 2}),
])
def test_vjp_edge_cases(name, params):
    fd_check("linear_attention", _case(t=5, **params), STEPS)


def test_relu_derivative_at_zero_is_zero():
    c = _case(t=3, feature_map="relu")
    c.arrays["q"][:] = 0.0
    g = linear_attention_vjp((np.ones((2, 3, 2, 4)), np.zeros((2, 2, 3, 4))), **c.arrays,
                             **c.params)
    assert np.all(g["q"] == 0.0)
