"""The scaling-law plan against the papers' own numbers: Chinchilla's Table 3 and Step Law's
bootstrap fits."""

from __future__ import annotations

import math

import pytest

from lmspec.conformance.cli import main
from lmspec.train import plan as P


@pytest.mark.parametrize("row", P.CHINCHILLA_TABLE3, ids=lambda r: f"{r[0]:.0e}")
def test_chinchilla_tokens_and_flops_are_table_3(row):
    n, flops, tokens = row
    assert P.chinchilla_tokens(n) == pytest.approx(tokens, rel=1e-12)
    # the table's FLOPs are 6 N D to the rounding of D (67B: D printed as 1.5T, 1.43T in 6ND)
    assert P.plan(n).flops == pytest.approx(flops, rel=0.05)


def test_chinchilla_is_about_20_tokens_per_parameter_between_the_rows():
    for n in (7e8, 3e9, 30e9, 400e9):
        assert 19 <= P.chinchilla_tokens(n) / n <= 22
    lo, hi = P.chinchilla_tokens(1e9), P.chinchilla_tokens(10e9)
    assert lo < P.chinchilla_tokens(3e9) < hi  # monotone between rows


def test_chinchilla_loss_at_chinchilla_itself():
    # Approach 3 at Chinchilla (70B, 1.4T): E + A/N^a + B/D^b = 1.69 + 0.0835 + 0.1611 = 1.935
    # (hand: 406.4 / 70e9^0.34 = 406.4 / 4866 = 0.0835; 410.7 / 1.4e12^0.28 = 410.7 / 2550
    # = 0.1611)
    assert P.chinchilla_loss(70e9, 1.4e12) == pytest.approx(1.935, abs=2e-3)


# the means of Step Law's 1000 bootstrap fits (step-law/steplaw,
# data/1004_fitted_lr_bs_scaling_model_parameters.csv), ln-space intercepts and exponents
_BOOT = {"lr_intercept": 0.5863077907, "lr_n": -0.7129222912, "lr_d": 0.3074909504,
         "bs_intercept": -0.5435421736, "bs_d": 0.5709443647}


@pytest.mark.parametrize("n,d", [(2.1e8, 4e9), (1e9, 1e11), (7e9, 1.4e12), (1e9, 2e10)])
def test_step_law_matches_the_bootstrap_mean_fit(n, d):
    b = _BOOT
    lr = math.exp(b["lr_intercept"]) * n ** b["lr_n"] * d ** b["lr_d"]
    bs = math.exp(b["bs_intercept"]) * d ** b["bs_d"]
    # the paper's rounded constants (1.79, -0.713, 0.307; 0.58, 0.571) stay within 3% of
    # the mean fit over these N and D
    assert P.step_law_lr(n, d) == pytest.approx(lr, rel=0.03)
    assert P.step_law_batch_tokens(d) == pytest.approx(bs, rel=0.03)


def test_step_law_hand_values():
    # 1B params on 100B tokens: 1.79 * 10^(-9 * 0.713) * 10^(11 * 0.307)
    #   = 1.79 * 10^-3.040 = 1.632e-3;  0.58 * 10^(11 * 0.571) = 0.58 * 10^6.281 = 1.107e6
    assert P.step_law_lr(1e9, 1e11) == pytest.approx(1.632e-3, rel=2e-3)
    assert P.step_law_batch_tokens(1e11) == pytest.approx(1.107e6, rel=2e-3)


def test_plan_rejects_bad_input():
    with pytest.raises(ValueError, match="params"):
        P.chinchilla_tokens(0)
    with pytest.raises(ValueError, match="seq_len"):
        P.plan(1e9, seq_len=0)


def test_cli_plan(capsys):
    assert main(["train", "--plan", "--params", "1e9"]) == 0
    out = capsys.readouterr().out
    assert "2.02e+10" in out and "1.21e+20" in out and "Step Law" in out
    assert main(["train", "--plan"]) == 2  # --params missing: a usage error, not a traceback
    assert "--params" in capsys.readouterr().err
