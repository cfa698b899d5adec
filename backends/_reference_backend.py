"""The reference as a backend: NumPy arrays, evaluated in the dtype of its float inputs.

Run in float64 it is the oracle; in a lower dtype it is the naive baseline itself, so it
passes by construction there. It is the baseline every speed ratio is taken against.
"""

from __future__ import annotations

import functools

import numpy as np

from lmspec import reference as _ref
from lmspec.backends import numpy_dtype
from lmspec.reference import computing_in
from lmspec.spec import stems

NAME = "reference"
DTYPES = ("float64", "float32", "bfloat16", "float16")
# What the naive evaluation cannot do: a float16 layer_norm squares x - mean in float16, which
# overflows for |x - mean| > 256 (inside float16's domain); the variance is then inf and every
# output 0, which the zero-answer rule rightly rejects. A copy of this
# backend run as a third party (tests/harness/test_third_party.py) passes everything else.
UNSUPPORTED = frozenset({("layer_norm", "float16")})


def asarray(a: np.ndarray, dtype: str | None) -> np.ndarray:
    return np.asarray(a) if dtype is None else np.asarray(a).astype(numpy_dtype(dtype))


def to_numpy(t) -> np.ndarray:
    return np.asarray(t)


def _float_dtype(args) -> np.dtype:
    """The dtype of the first floating array argument (ml_dtypes' bfloat16 has kind 'V')."""
    for a in args:
        if isinstance(a, np.ndarray) and a.dtype.kind in "fV":
            return a.dtype
    return np.dtype(np.float64)


def _in_input_dtype(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with computing_in(_float_dtype([*args, *kwargs.values()])):
            return fn(*args, **kwargs)
    return run


def _vjp_in_input_dtype(fn):
    @functools.wraps(fn)
    def run(cotangent, *args, **kwargs):
        with computing_in(_float_dtype([*args, *kwargs.values()])):
            return fn(cotangent, *args, **kwargs)
    return run


for _stem in stems():
    if not hasattr(_ref, _stem):  # not implemented (test_layout requires every stem)
        continue
    globals()[_stem] = _in_input_dtype(getattr(_ref, _stem))
    if hasattr(_ref, f"{_stem}_vjp"):  # a non-differentiable stem (quantizers) has none
        globals()[f"{_stem}_vjp"] = _vjp_in_input_dtype(getattr(_ref, f"{_stem}_vjp"))


def _params_dtype(fn):
    """The model functions take a parameter mapping: they compute in its arrays' dtype."""
    @functools.wraps(fn)
    def run(params, *args, **kwargs):
        dts = [a.dtype for a in params.values() if isinstance(a, np.ndarray)]
        with computing_in(dts[0] if dts else np.dtype(np.float64)):
            return fn(params, *args, **kwargs)
    return run


model = _params_dtype(_ref.model)
model_loss = _params_dtype(_ref.model_loss)
model_grad = _params_dtype(_ref.model_grad)


def train_step(params, opt_state, batch, step, *, model_config, train_config):
    """The reference step (float64 arithmetic, its config's compute dtype for the model),
    its new weights and moments in the dtype of the ones it was given: float32 masters stay
    float32, as a real backend's do."""
    new_p, new_opt, metrics = _ref.train_step(params, opt_state, batch, step,
                                              model_config=model_config,
                                              train_config=train_config)

    def like(new, old):
        return {n: np.asarray(a).astype(np.asarray(old[n]).dtype) for n, a in new.items()}

    return like(new_p, params), {k: like(d, opt_state[k]) for k, d in new_opt.items()}, metrics
