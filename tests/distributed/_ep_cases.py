"""Shared by the expert-parallel workers: the cases (global arrays, seeded) and the verdict of
the tolerance policy against the float64 reference."""

from __future__ import annotations

import numpy as np

from lmspec.conformance._check import magnitudes, reference_grads, reference_outputs, rounded
from lmspec.spec import Case
from lmspec.spec._tolerance import judge

RANKS = 4
STEM = "moe_layer"


def case(name: str) -> Case:
    """N = 16 tokens (4 a rank), E = 8 experts (2 a rank), top-2."""
    rng = np.random.default_rng(len(name))
    n, e, k, d, f = 16, 8, 2, 8, 4
    if name == "skewed":  # popular experts 0 and 5 overflow a capacity of 4
        p = np.array([8, 1, 1, 1, 1, 6, 1, 1], float)
        ids = np.stack([rng.choice(e, k, replace=False, p=p / p.sum()) for _ in range(n)])
    else:
        ids = np.stack([rng.choice(e, k, replace=False) for _ in range(n)])
    arrays = {"x": rng.standard_normal((n, d)), "topk_ids": ids.astype(np.int64),
              "topk_weights": rng.uniform(0, 1, (n, k)),
              "w_gate": rng.standard_normal((e, d, f)) / 3,
              "w_up": rng.standard_normal((e, d, f)) / 3,
              "w_down": rng.standard_normal((e, f, d)) / 2, "shared_w_gate": None,
              "shared_w_up": None, "shared_w_down": None, "shared_gate": None}
    params = {"capacity_factor": None}
    if name == "skewed":
        params["capacity_factor"] = 1.0  # C = ceil(16 * 2 / 8) = 4
        arrays.update(shared_w_gate=rng.standard_normal((d, 6)) / 3,
                      shared_w_up=rng.standard_normal((d, 6)) / 3,
                      shared_w_down=rng.standard_normal((6, d)) / 2,
                      shared_gate=rng.standard_normal((d, 1)))
    return Case(arrays, params)


CASES = ("plain", "skewed")


def verdict(name: str, out: np.ndarray, kept: np.ndarray) -> str | None:
    """None when ``out`` passes the tolerance policy (float32) and ``kept`` is exact."""
    c = case(name)
    arrays = rounded(c, STEM, np.dtype(np.float32))
    ref_out, ref_kept = reference_outputs(STEM, arrays, c.params)
    naive_out, _ = reference_outputs(STEM, arrays, c.params, np.float32)
    if not np.array_equal(np.asarray(kept, bool), ref_kept):
        return f"{name}: kept differs from the reference at {np.argwhere(kept != ref_kept)[:4]}"
    if name == "skewed" and ref_kept.all():
        return f"{name}: the case was meant to drop assignments"
    v = judge(out, ref_out, naive_out, out_dtype=np.dtype(np.float32), kind="output",
              magnitude=magnitudes(STEM, arrays, c.params)[0])
    return None if v.ok else f"{name}: {v.reason}; error {v.err:.3g} > bound {v.bound:.3g}"


GRADS = ("x", "topk_weights", "w_gate", "w_up", "w_down")


def cotangent(name: str) -> np.ndarray:
    """The cotangent of ``out`` for the gradient check (float32 values)."""
    c = case(name)
    return np.random.default_rng(99).standard_normal(c.arrays["x"].shape).astype(np.float32)


def grad_verdict(name: str, grads: dict) -> str | None:
    """None when every gradient in GRADS passes the tolerance policy (float32)."""
    c = case(name)
    arrays = rounded(c, STEM, np.dtype(np.float32))
    cts = [cotangent(name).astype(np.float64), np.zeros(c.arrays["topk_ids"].shape)]
    ref = reference_grads(STEM, cts, arrays, c.params)
    naive = reference_grads(STEM, cts, arrays, c.params, np.float32)
    mags = magnitudes(STEM, arrays, c.params, cts)
    for n in GRADS:
        v = judge(np.asarray(grads[n]), ref[n], naive[n], out_dtype=np.dtype(np.float32),
                  kind="gradient", magnitude=mags.get(n, 0.0))
        if not v.ok:
            return f"{name}: gradient {n}: {v.reason}; error {v.err:.3g} > bound {v.bound:.3g}"
    return None
