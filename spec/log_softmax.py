"""Log-softmax over one axis: ``x - logsumexp(x)``, stable for any finite input."""

from __future__ import annotations

from lmspec.spec._contract import Component
from lmspec.spec.softmax import COMPONENT as _SOFTMAX
from lmspec.spec.softmax import check_args, logit_cases

__all__ = ["COMPONENT", "check_args", "log_softmax"]


def log_softmax(x, *, axis: int = -1):
    """``y = x - m - log(sum(exp(x - m)))`` with ``m = max(x, axis)``.

    Shapes, domain and rejected inputs are those of ``softmax``. Computing ``log(softmax(x))``
    is not conforming: it underflows to -inf where the true value is finite.

    Gradient: ``dx = dy - exp(y) * sum(dy, axis)``.
    """
    check_args(x, axis=axis)
    raise NotImplementedError("lmspec.spec states the contract; lmspec.reference computes it")


COMPONENT = Component(
    stem="log_softmax",
    coverage={"axis": ("-1", "0")},
    inputs=("x",),
    outputs=("y",),
    differentiable=("x",),
    cases=logit_cases,
    errors=_SOFTMAX.errors,
    summary="log-softmax along an axis; x - logsumexp(x); never log(softmax)",
)
