"""The tolerance policy itself: the holes it closes and the answers it must never accept."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from lmspec.spec import _tolerance as T

F32 = np.dtype(np.float32)


def _ref(n=64, seed=0):
    return np.random.default_rng(seed).standard_normal(n)


def test_exact_answer_passes_with_zero_naive_error():
    ref = _ref()
    v = T.judge(ref.astype(F32), ref, ref, out_dtype=F32, kind="output")
    assert v.ok and v.err == 0.0 and v.floor > 0


def test_more_accurate_than_naive_always_passes():
    ref = _ref()
    naive = ref + 1e-3
    got = ref + 1e-6
    assert T.judge(got, ref, naive, out_dtype=F32, kind="output").ok


def test_bound_is_k_times_naive_plus_floor():
    ref = _ref()
    naive = ref + 1e-4
    v_ok = T.judge(ref + 1.9e-4, ref, naive, out_dtype=F32, kind="output")
    v_bad = T.judge(ref + 2.2e-4, ref, naive, out_dtype=F32, kind="output")
    assert v_ok.ok and not v_bad.ok
    assert v_ok.bound == pytest.approx(2 * v_ok.naive_err + v_ok.floor)
    # gradients get k = 3
    assert T.judge(ref + 2.5e-4, ref, naive, out_dtype=F32, kind="gradient").ok


def test_zero_naive_error_does_not_make_the_bound_zero():
    ref = np.array([1.0, -2.0, 3.0])
    got = np.nextafter(ref.astype(F32), np.float32(np.inf))  # one ulp off
    assert T.judge(got, ref, ref, out_dtype=F32, kind="output").ok


def test_all_zeros_answer_never_passes_even_when_naive_is_terrible():
    ref = _ref() * 1e-3
    naive = ref + 1.0  # a naive baseline far worse than the values themselves
    v = T.judge(np.zeros_like(ref), ref, naive, out_dtype=F32, kind="output")
    assert v.weak and not v.ok


def test_mean_answer_never_passes_even_when_naive_is_terrible():
    ref = 5.0 + _ref() * 1e-3
    naive = ref + 0.5
    v = T.judge(np.full_like(ref, ref.mean()), ref, naive, out_dtype=F32, kind="output")
    assert v.weak and not v.ok


def test_a_constant_output_is_not_weak():
    ref = np.full(8, 0.125)  # a uniform softmax row: the mean IS the answer
    v = T.judge(ref, ref, ref, out_dtype=F32, kind="output")
    assert v.ok and not v.weak


def test_nan_where_the_reference_is_finite_fails():
    ref = _ref(4)
    got = ref.copy()
    got[2] = np.nan
    v = T.judge(got, ref, ref, out_dtype=F32, kind="output")
    assert not v.ok and v.worst_index == (2,)


def test_neg_inf_pattern_is_compared_exactly():
    ref = np.array([0.5, -np.inf, 1.0])
    assert T.judge(ref, ref, ref, out_dtype=F32, kind="output", neg_inf_ok=True).ok
    got = np.array([0.5, 0.0, 1.0])
    assert not T.judge(got, ref, ref, out_dtype=F32, kind="output", neg_inf_ok=True).ok


def test_shape_mismatch_fails():
    ref = _ref(6)
    assert not T.judge(ref.reshape(2, 3), ref, ref, out_dtype=F32, kind="output").ok


def test_overflowing_naive_falls_back_to_the_dtype_table():
    ref = _ref()
    naive = np.full_like(ref, np.inf)
    bf16 = np.dtype(ml_dtypes.bfloat16)
    assert T.judge(ref * (1 + 5e-3), ref, naive, out_dtype=bf16, kind="output").fallback
    assert T.judge(ref * (1 + 5e-3), ref, naive, out_dtype=bf16, kind="output").ok
    assert not T.judge(ref * 1.1, ref, naive, out_dtype=bf16, kind="output").ok


def test_floor_never_below_one_step_of_the_dtype():
    f16 = np.dtype(np.float16)
    tiny_step = float(ml_dtypes.finfo(f16).smallest_subnormal)
    assert T.floor_for(f16, 4.0, 1e-9) >= 4 * tiny_step


def test_magnitude_raises_the_floor_where_a_sum_cancels():
    ref = np.array([1e-7, -1e-7])
    got = ref + 1e-7  # 1e-7 absolute: tiny relative to terms of size 1
    assert not T.judge(got, ref, ref, out_dtype=F32, kind="output").ok
    assert T.judge(got, ref, ref, out_dtype=F32, kind="output", magnitude=1.0).ok


def test_overrides_need_a_reason_and_match_by_wildcard():
    o = T.Override("torch_triton", "sdpa", "*", "gradient", k=4.0, reason="why")
    assert o.matches("torch_triton", "sdpa", "bfloat16", "gradient")
    assert not o.matches("jax_xla", "sdpa", "bfloat16", "gradient")
    for entry in T.OVERRIDES:
        assert entry.reason.strip(), f"override without a reason: {entry}"
