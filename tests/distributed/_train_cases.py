"""What the distributed training checks share: the naive and reference steps of a case, and
the comparison of a distributed step with the one-process step when the two sum the same
gradients in a different order (more than 2 ranks or devices: float32 addition does not
associate, so bit-identity is not the spec)."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import numpy as np

from lmspec.conformance.test_train_step import _naive_step, split_gap

RT = importlib.import_module("lmspec.reference.train_step")  # not the function
F32 = SimpleNamespace(np_dtype=np.float32)  # what _naive_step reads of a conformance target


def _np(x) -> np.ndarray:
    return np.asarray(x, np.float64)


def sides(params, opt, batch, step, cfg, tc) -> tuple:
    """(naive float32 step, float64 reference step) of one case."""
    return (_naive_step(params, opt, batch, step, cfg, tc, F32),
            RT.train_step(params, opt, batch, step, model_config=cfg, train_config=tc))


def differences(got, one, naive, ref, cfg) -> list[str]:
    """What differs between a distributed step ``got`` and the one-process step ``one`` (both
    (params, opt_state, metrics)), given the naive float32 and the float64 reference steps:
    the weights, both moments, the loss and the grad norm within ``split_gap``'s bound; the
    token count, the expert loads and the router biases exactly."""
    out = []
    pairs = [(f"{what}[{k!r}]", g[k], o[k], n[k], r[k])
             for what, g, o, n, r in (
                 ("params", got[0], one[0], naive[0], ref[0]),
                 ("m", got[1]["m"], one[1]["m"], naive[1]["m"], ref[1]["m"]),
                 ("v", got[1]["v"], one[1]["v"], naive[1]["v"], ref[1]["v"]))
             for k in r if k in ref[1]["m"]]
    pairs += [(f"metrics[{k!r}]", got[2][k], one[2][k], naive[2][k], ref[2][k])
              for k in ("loss", "grad_norm")]
    for what, g, o, n, r in pairs:
        problem = split_gap((_np(g), _np(n), _np(r)), (_np(o), _np(n), _np(r)), np.float32)
        if problem:
            out.append(f"{what} differs from one device by {problem}")
    if got[2]["n_tokens"] != one[2]["n_tokens"]:
        out.append(f"n_tokens {got[2]['n_tokens']} != {one[2]['n_tokens']}")
    if cfg.moe and not np.array_equal(np.asarray(got[2]["loads"]), np.asarray(one[2]["loads"])):
        out.append("expert loads differ from one device")
    for k in set(ref[0]) - set(ref[1]["m"]):  # the router biases, exactly
        if not np.array_equal(np.asarray(got[0][k]), np.asarray(one[0][k])):
            out.append(f"buffer {k!r} differs from one device")
    return out
