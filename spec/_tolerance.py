"""The tolerance policy (DESIGN.md), in one place: the error-ratio bound and its override table.

    err(backend) <= k * err(naive) + floor

``err(x) = max |x - ref64|`` with ref64 the float64 reference rounded to the backend's output
dtype; ``naive`` the reference evaluated in the backend's dtype (lmspec.reference.computing_in);
``k`` = 2 for outputs, 3 for gradients; ``floor`` = ``FLOOR_ULPS`` ulps of the output dtype at
the output's scale, so a zero naive error cannot make the bound zero. The scale is the larger of
max |ref64| and the *magnitude* of the computation (the reference evaluated on the absolute
values of its inputs: the classic forward-error scale of a sum, which matters where a sum
cancels to a tiny result); when both are zero (an exactly-zero answer) it is the inputs' scale.
The floor is never below one step of the dtype (its smallest subnormal).

Two holes closed:
- *trivial answers*: when the bound would admit returning zeros (max|ref| <= bound, for an
  output that is not itself ~0) or the mean (max|ref - mean| <= bound, for an output that is
  not itself constant), the k-fold slack is dropped: the backend must then be as accurate as
  naive (err <= max(err_naive, floor)); and in every case the error must stay below half the
  trivial answers' errors. Such a case is flagged ``weak``; mutant tests prove that all-zeros
  and mean answers fail the suite.
- *no baseline*: when the naive evaluation overflows (non-finite error), the per-dtype
  rtol/atol table of torch.testing is used instead, elementwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

K = {"output": 2.0, "gradient": 3.0}
FLOOR_ULPS = 4.0

# torch.testing's defaults: (rtol, atol), the fallback where no naive baseline exists.
FALLBACK = {
    "float64": (1e-7, 1e-7),
    "float32": (1.3e-6, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float16": (1e-3, 1e-5),
}


@dataclass(frozen=True)
class Override:
    """A justified exception to the default policy; ``"*"`` matches anything."""

    backend: str
    component: str
    dtype: str
    kind: str  # "output" | "gradient" | "*"
    k: float | None = None
    floor_ulps: float | None = None
    reason: str = ""

    def matches(self, backend: str, component: str, dtype: str, kind: str) -> bool:
        return all(p in ("*", v) for p, v in (
            (self.backend, backend), (self.component, component), (self.dtype, dtype),
            (self.kind, kind)))


# Every entry needs a reason a reviewer accepts. Empty means the default policy holds everywhere.
OVERRIDES: tuple[Override, ...] = ()


def eps_of(dtype: np.dtype) -> float:
    import ml_dtypes

    return float(ml_dtypes.finfo(dtype).eps)


def tiny_of(dtype: np.dtype) -> float:
    import ml_dtypes

    return float(ml_dtypes.finfo(dtype).smallest_normal)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    err: float
    bound: float
    naive_err: float
    floor: float
    k: float
    weak: bool = False
    fallback: bool = False
    worst_index: tuple[int, ...] | None = None
    worst_value: float | None = None
    worst_ref: float | None = None
    reason: str = ""

    @property
    def ratio(self) -> float:
        """err / bound: < 1 passes; the report's 'worst error ratio'."""
        if self.bound > 0:
            return self.err / self.bound
        return 0.0 if self.err == 0 else float("inf")


def _params(backend: str, component: str, dtype: str, kind: str) -> tuple[float, float]:
    k, floor_ulps = K[kind], FLOOR_ULPS
    for o in OVERRIDES:
        if o.matches(backend, component, dtype, kind):
            k = o.k if o.k is not None else k
            floor_ulps = o.floor_ulps if o.floor_ulps is not None else floor_ulps
    return k, floor_ulps


def _worst(diff: np.ndarray, got: np.ndarray, ref: np.ndarray):
    if diff.size == 0:
        return None, None, None
    idx = np.unravel_index(int(np.nanargmax(diff)), diff.shape)
    return tuple(int(i) for i in idx), float(got[idx]), float(ref[idx])


def floor_for(out_dtype: np.dtype, floor_ulps: float, *scales: float) -> float:
    """``floor_ulps`` ulps at the largest given scale, never below the dtype's smallest step."""
    import ml_dtypes

    scale = max((float(x) for x in scales if np.isfinite(x)), default=0.0)
    step = float(ml_dtypes.finfo(out_dtype).smallest_subnormal)
    return floor_ulps * max(eps_of(out_dtype) * scale, step)


def judge(got: np.ndarray, ref64: np.ndarray, naive: np.ndarray, *, out_dtype: np.dtype,
          kind: str, backend: str = "*", component: str = "*", dtype: str = "*",
          neg_inf_ok: bool = False, magnitude: float = 0.0) -> Verdict:
    """Apply the policy to one output (or gradient). Arrays may be any float dtype.

    ``magnitude`` is the scale at which a correct implementation's rounding errors live when
    it exceeds max|ref| (a sum that cancels: see conformance's magnitude evaluation).
    """
    k, floor_ulps = _params(backend, component, dtype, kind)
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(np.asarray(ref64, dtype=np.float64).astype(out_dtype), dtype=np.float64)
    naive = np.asarray(naive, dtype=np.float64)
    fail = dict(bound=0.0, naive_err=float("nan"), floor=0.0, k=k)
    if got.shape != ref.shape:
        return Verdict(False, float("inf"), reason=f"shape {got.shape}, expected {ref.shape}",
                       **fail)
    # Non-finite reference values are exact answers: -inf on a fully masked row's lse, or a
    # true value beyond the output dtype's range (rounds to +-inf). They must match exactly.
    exact = ~np.isfinite(ref)
    same_special = np.where(exact, (got == ref) | (np.isnan(got) & np.isnan(ref)), True)
    if not np.all(same_special):
        idx = tuple(int(i) for i in np.argwhere(~same_special)[0])
        what = "-inf on a fully masked row" if neg_inf_ok else "a non-finite value"
        return Verdict(False, float("inf"), worst_index=idx, worst_value=float(got[idx]),
                       worst_ref=float(ref[idx]), reason=f"the reference has {what} here",
                       **fail)
    finite = ~exact
    if not np.all(np.isfinite(got[finite])):
        idx = tuple(int(i) for i in np.argwhere(finite & ~np.isfinite(got))[0])
        return Verdict(False, float("inf"), worst_index=idx, worst_value=float(got[idx]),
                       worst_ref=float(ref[idx]), reason="non-finite value where the reference "
                       "is finite", **fail)
    g, r, n = (np.where(finite, a, 0.0) for a in (got, ref, naive))
    diff = np.abs(g - r)
    err = float(diff.max(initial=0.0))
    idx, wv, wr = _worst(diff, got, ref)
    scale = float(np.abs(r).max(initial=0.0))
    floor = floor_for(out_dtype, floor_ulps, scale, magnitude)
    with np.errstate(invalid="ignore"):
        naive_err = float(np.abs(n - r).max(initial=0.0))
    if not np.isfinite(naive_err):
        rtol, atol = FALLBACK.get(str(np.dtype(out_dtype)), FALLBACK["float32"])
        tol = atol + rtol * np.abs(r)
        ok = bool(np.all(diff <= tol))
        ratio_bound = float((diff / tol).max(initial=0.0))
        return Verdict(ok, err, err / ratio_bound if ratio_bound else 0.0, naive_err, floor, k,
                       fallback=True, worst_index=idx, worst_value=wv, worst_ref=wr,
                       reason="" if ok else "exceeds the fallback rtol/atol table")
    bound = k * naive_err + floor
    mean = float(r[finite].mean()) if finite.any() else 0.0
    spread = float(np.abs(np.where(finite, r - mean, 0.0)).max(initial=0.0))
    # trivial answers: all zeros (when the output is not itself ~0) or the mean (when the
    # output is not itself constant); the bound must not admit them
    trivial = [t for t in (scale, spread) if t > floor]  # the trivial answers' errors
    weak = any(bound >= t for t in trivial)
    if weak:
        bound = max(naive_err, floor)
    # never accept an answer no better than a trivial one, however bad naive is: the error
    # must be at most half a trivial answer's (a trivial error counts only above the floor,
    # i.e. above 4 ulps, so a correct answer within 2 ulps is never refused)
    beats_trivial = all(err <= t / 2 for t in trivial)
    ok = err <= bound and beats_trivial
    reason = "" if ok else ("error above the bound" if err > bound else
                            "no better than a trivial answer (all zeros or the mean): the error "
                            "must be at most half of theirs")
    return Verdict(ok, err, bound, naive_err, floor, k, weak=weak, worst_index=idx,
                   worst_value=wv, worst_ref=wr, reason=reason)
