"""The gradients of DPO and GRPO as a weighted cross-entropy's, so that the spec's
``train_step`` applies them (align/loop.py).

Both losses are functions of the per-token log-probs ``logp_t`` of the targets, so their
gradient with respect to the weights is ``sum_t (dL/dlogp_t) dlogp_t/dtheta``. The backend's
own loss component gives ``dL/dlogp_t`` (its vjp), and ``train_step`` with per-target weights
``w_t = -n dL/dlogp_t`` (n the number of weighted targets; the step's cross-entropy term is
``sum_t w_t CE_t / n`` and ``CE_t = -logp_t``) turns that into exactly ``dL/dtheta``."""

from __future__ import annotations

import numpy as np

from lmspec import reference
from lmspec.align.tasks import IGNORE_INDEX
from lmspec.spec._model_config import ModelConfig


def token_logp(b, p, config: ModelConfig, rows: dict[str, np.ndarray]) -> np.ndarray:
    """(B, T) float64 log-probs of ``rows["targets"]`` under the backend's model (0 where a
    target is ignored)."""
    logits, _ = b.fn("model")(p, rows["tokens"], config=config)
    lp = reference.log_softmax(np.asarray(b.to_numpy(logits), np.float64))
    tg = rows["targets"]
    valid = tg != IGNORE_INDEX
    picked = np.take_along_axis(lp, np.where(valid, tg, 0)[..., None], -1)[..., 0]
    return np.where(valid, picked, 0.0)


def token_weights(mask: np.ndarray, dlogp: np.ndarray) -> np.ndarray:
    """Per-target weights whose weighted cross-entropy (``train_step``'s, divided by the
    ``n = sum(mask)`` weighted targets) has the gradient of a loss with ``dL/dlogp``:
    ``w = -n dL/dlogp`` on the mask (the module docstring)."""
    return (-int(mask.sum()) * dlogp * mask).astype(np.float32)


def loss_and_grad(b, stem: str, arrays: dict, params: dict, wrt: tuple[str, ...],
                  dtype: str = "float32"):
    """A loss component of the backend, run in ``dtype``, and its vjp for cotangent 1 on the
    loss (its other outputs, e.g. rewards and advantages, get 0): (outputs, {name:
    gradient}), as float64 host arrays."""
    native = {k: b.asarray(v, None if v.dtype.kind in "iub" else dtype)
              for k, v in arrays.items()}
    outs = b.call(stem, native, params)
    host = [np.asarray(b.to_numpy(o), np.float64) for o in outs]
    cts = [b.asarray(np.ones_like(host[0]), dtype),
           *(b.asarray(np.zeros_like(h), dtype) for h in host[1:])]
    grads = b.vjp(stem, native, params, cts, wrt)
    return host, {k: np.asarray(b.to_numpy(g), np.float64) for k, g in grads.items()}


def dpo_gradients(b, params, ref_params, config: ModelConfig, rows: dict, mask: np.ndarray,
                  loss_params: dict, dtype: str = "float32"):
    """DPO on rows whose first half are the chosen and second half the rejected responses:
    (loss, chosen_rewards, rejected_rewards, dL/dlogp (B, T))."""
    p = len(mask) // 2
    pol = token_logp(b, params, config, rows).sum(-1)
    ref = token_logp(b, ref_params, config, rows).sum(-1)
    (loss, cr, rj), g = loss_and_grad(
        b, "preference_loss", {"policy_chosen": pol[:p], "policy_rejected": pol[p:],
                               "ref_chosen": ref[:p], "ref_rejected": ref[p:]},
        loss_params, ("policy_chosen", "policy_rejected"), dtype)
    per_row = np.concatenate([g["policy_chosen"], g["policy_rejected"]])
    return float(loss), cr, rj, per_row[:, None] * mask


def completion_window(mask: np.ndarray, starts: np.ndarray, width: int):
    """Indices (B, width) of each row's completion targets (clipped to the row; the row's
    last position, which predicts nothing, absorbs the overhang) and the 0/1 window mask."""
    at = starts[:, None] + np.arange(width)
    inside = at < mask.shape[1]
    at = np.minimum(at, mask.shape[1] - 1)
    return at, (np.take_along_axis(mask, at, 1) * inside).astype(np.int32)


def grpo_gradients(b, params, ref_params, config: ModelConfig, rows: dict, mask: np.ndarray,
                   starts: np.ndarray, rewards: np.ndarray, width: int, loss_params: dict,
                   old_logp: np.ndarray | None = None, dtype: str = "float32"):
    """GRPO on (B, width) completion windows (Dr. GRPO's constant normalizer is then
    B * width whatever the step's longest prompt): (loss, dL/dlogp (B, T), window logp,
    window ref logp, window mask). ``old_logp`` (window): the sampler's; None: the policy's
    own (one update per batch of samples, ratio 1). ``ref_params`` None: no KL term.
    ``dtype``: the loss component's (the log-probs come from the model in its own)."""
    at, win = completion_window(mask, starts, width)
    full = token_logp(b, params, config, rows)
    logp = np.take_along_axis(full, at, 1) * win
    ref = logp if ref_params is None else (
        np.take_along_axis(token_logp(b, ref_params, config, rows), at, 1) * win)
    (loss, _), g = loss_and_grad(
        b, "grpo_loss", {"logp": logp, "old_logp": logp if old_logp is None else old_logp,
                         "ref_logp": ref, "rewards": np.asarray(rewards, np.float64),
                         "mask": win},
        {**loss_params, "max_completion_length": width}, ("logp",), dtype)
    dlogp = np.zeros_like(full)
    np.put_along_axis(dlogp, at, g["logp"] * win, 1)  # overhang indices carry 0
    return float(loss), dlogp * mask, logp, ref, win
