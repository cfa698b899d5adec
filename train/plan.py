"""``lmspec train --plan --params N``: a scaling-law plan for a model of N parameters.

- Chinchilla (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models"):
  the compute-optimal number of training tokens D(N), read off the paper's Table 3 (the
  projections of its Approach 1: N_opt and D_opt both ~ C^0.5, about 20 tokens per
  parameter), interpolated in log-log between its rows (and extrapolated along the end
  segments' power laws); the training compute C = 6 N D FLOPs, the paper's own
  approximation (its Table 3 FLOPs are 6 N D of its rows, to the rounding of D). Also the
  Approach 3 parametric loss L(N, D) = E + A / N^alpha + B / D^beta with the paper's fit
  (E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28), as the expected final loss.
- Step Law (Li et al. 2025, "Predictable Scale: Part I", arXiv 2503.04715): the optimal peak
  learning rate eta(N, D) = 1.79 N^-0.713 D^0.307 and batch size B(D) = 0.58 D^0.571 in
  tokens (independent of N). The constants are the means of the paper's 1000 bootstrap fits
  (step-law/steplaw, data/1004_fitted_lr_bs_scaling_model_parameters.csv: exp(0.5863) =
  1.797, -0.7129, 0.3075; exp(-0.5435) = 0.5807, 0.5709), fitted with AdamW, a fixed final
  learning rate of 1e-5 after cosine decay, on N in [2.1e8, 1e9+] (see the paper for the
  ranges: outside them, the numbers are extrapolations)."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Hoffmann et al. 2022, Table 3: (parameters, FLOPs, tokens)
CHINCHILLA_TABLE3 = (
    (400e6, 1.92e19, 8.0e9),
    (1e9, 1.21e20, 20.2e9),
    (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12),
    (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12),
    (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
)
# Approach 3's fit (Hoffmann et al. 2022, eq. 10)
CHINCHILLA_LOSS = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
# Step Law (Li et al. 2025, eq. 1 and 2)
STEP_LAW = {"lr_coef": 1.79, "lr_n": -0.713, "lr_d": 0.307, "bs_coef": 0.58, "bs_d": 0.571}


def chinchilla_tokens(n_params: float) -> float:
    """Compute-optimal training tokens for ``n_params`` (Table 3, log-log interpolated)."""
    if not (n_params > 0 and math.isfinite(n_params)):
        raise ValueError(f"params: expected a positive number, got {n_params!r}")
    rows = CHINCHILLA_TABLE3
    x = math.log(n_params)
    i = 0
    while i < len(rows) - 2 and x > math.log(rows[i + 1][0]):
        i += 1
    (n0, _, d0), (n1, _, d1) = rows[i], rows[i + 1]
    slope = (math.log(d1) - math.log(d0)) / (math.log(n1) - math.log(n0))
    return math.exp(math.log(d0) + slope * (x - math.log(n0)))


def chinchilla_loss(n_params: float, tokens: float) -> float:
    c = CHINCHILLA_LOSS
    return c["E"] + c["A"] / n_params ** c["alpha"] + c["B"] / tokens ** c["beta"]


def step_law_lr(n_params: float, tokens: float) -> float:
    s = STEP_LAW
    return s["lr_coef"] * n_params ** s["lr_n"] * tokens ** s["lr_d"]


def step_law_batch_tokens(tokens: float) -> float:
    s = STEP_LAW
    return s["bs_coef"] * tokens ** s["bs_d"]


@dataclass(frozen=True)
class Plan:
    n_params: float
    tokens: float
    flops: float
    lr: float
    batch_tokens: float
    seq_len: int
    expected_loss: float

    @property
    def batch_sequences(self) -> float:
        return self.batch_tokens / self.seq_len

    @property
    def steps(self) -> float:
        return self.tokens / self.batch_tokens

    def lines(self) -> list[str]:
        return [
            f"parameters N                 {self.n_params:.3g}",
            f"tokens D (Chinchilla, T3)    {self.tokens:.3g}  ({self.tokens / self.n_params:.1f} "
            "per parameter)",
            f"compute 6 N D                {self.flops:.3g} FLOPs",
            f"expected loss (Approach 3)   {self.expected_loss:.3f} nats/token (their data)",
            f"peak lr (Step Law)           {self.lr:.3g}",
            f"batch (Step Law)             {self.batch_tokens:.3g} tokens = "
            f"{self.batch_sequences:.0f} sequences of {self.seq_len}",
            f"steps D / B                  {self.steps:.3g}",
        ]


def plan(n_params: float, tokens: float | None = None, seq_len: int = 2048) -> Plan:
    """The plan for ``n_params`` (``tokens`` defaults to Chinchilla's optimum)."""
    if seq_len < 1:
        raise ValueError(f"seq_len: expected >= 1, got {seq_len}")
    d = chinchilla_tokens(n_params) if tokens is None else float(tokens)
    if not d > 0:
        raise ValueError(f"tokens: expected a positive number, got {tokens!r}")
    return Plan(n_params, d, 6.0 * n_params * d, step_law_lr(n_params, d),
                step_law_batch_tokens(d), seq_len, chinchilla_loss(n_params, d))
